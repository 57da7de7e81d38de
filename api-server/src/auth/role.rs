//! Roles: what a caller may do beyond their own content. Stored in `users.role` and
//! carried in the access token (claim `role`, absent for ordinary users), so an admin
//! route needs no database read to decide. A role change ends the user's sessions
//! (`stoa-api admin`), so no token outlives the role it carries.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    User,
    /// May use `/api/admin/*`: list and disable users, remove any article or comment.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// The role stored in `users.role` (a check constraint allows only these two).
    pub fn from_db(value: &str) -> Role {
        match value {
            "admin" => Role::Admin,
            _ => Role::User,
        }
    }

    pub fn is_user(&self) -> bool {
        *self == Role::User
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_the_database_spelling() {
        for role in [Role::User, Role::Admin] {
            assert_eq!(Role::from_db(role.as_str()), role);
        }
        assert_eq!(
            serde_json::to_string(&Role::Admin).unwrap(),
            format!("\"{}\"", Role::Admin.as_str())
        );
    }
}
