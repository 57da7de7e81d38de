//! Database credential rotation as both programs see it: the roles, the `stoa-api
//! credentials` commands the operator runs as Jobs (with the admin credential), their exit
//! codes and report.
//!
//! Two login roles (`<group>_a`, `<group>_b`) are members of one group role (`<group>`,
//! no login) that holds the application's privileges; the operator alternates between
//! them: a new password on the idle role, published in the connection Secret, confirmed
//! by every pod, then the previous role's password expires once none of its sessions
//! remain. Each pod names its sessions with its pod name (`application_name`), so the
//! report says which pods still hold the old role.

use serde::{Deserialize, Serialize};

/// `credentials expire` gave up waiting: sessions of the role remain (a pod has not
/// switched yet). Retrying later can help.
pub const EXIT_SESSIONS_REMAIN: i32 = 4;

/// The two login roles of a group.
pub fn login_roles(group: &str) -> [String; 2] {
    [format!("{group}_a"), format!("{group}_b")]
}

/// Role names are embedded in SQL (PostgreSQL takes no parameters for identifiers), so
/// only plain lowercase names are accepted: `[a-z_][a-z0-9_]*`, at most 48 bytes (room
/// for the `_a`/`_b` suffix under PostgreSQL's 63).
pub fn valid_role(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Passwords are embedded as SQL literals for the same reason: generated ones are
/// alphanumeric, and nothing else is accepted.
pub fn valid_password(password: &str) -> bool {
    (16..=128).contains(&password.len()) && password.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A fresh 32-character alphanumeric password (~190 bits).
pub fn generate_password() -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// What a credential Job runs, after the binary name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialCommand {
    /// Create the group and login roles if missing, grant the group the application's
    /// privileges, and give `role` the password in `password_file`.
    Publish {
        group: String,
        role: String,
        password_file: String,
    },
    /// Wait (at most `wait_seconds`) until no session of `role` remains, then remove its
    /// password; exit [`EXIT_SESSIONS_REMAIN`] if sessions remain. With
    /// `end_idle_sessions` (a pooler in front), the role's idle sessions, which are the
    /// pooler's server connections once every pod has moved on, are ended rather than
    /// waited for.
    Expire {
        role: String,
        wait_seconds: u64,
        end_idle_sessions: bool,
    },
    /// Drop the login roles and the group (the Stoa is being deleted).
    Drop { group: String },
}

impl CredentialCommand {
    pub fn args(&self, report_file: &str) -> Vec<String> {
        let mut args = vec!["credentials".to_owned()];
        match self {
            CredentialCommand::Publish {
                group,
                role,
                password_file,
            } => args.extend([
                "publish".into(),
                "--group".into(),
                group.clone(),
                "--role".into(),
                role.clone(),
                "--password-file".into(),
                password_file.clone(),
            ]),
            CredentialCommand::Expire {
                role,
                wait_seconds,
                end_idle_sessions,
            } => {
                args.extend([
                    "expire".into(),
                    "--role".into(),
                    role.clone(),
                    "--wait-seconds".into(),
                    wait_seconds.to_string(),
                ]);
                if *end_idle_sessions {
                    args.push("--end-idle-sessions".into());
                }
            }
            CredentialCommand::Drop { group } => {
                args.extend(["drop".into(), "--group".into(), group.clone()]);
            }
        }
        args.extend(["--report-file".into(), report_file.to_owned()]);
        args
    }
}

/// The one-line JSON a credential Job leaves as its termination message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialReport {
    pub ok: bool,
    pub message: String,
    /// `application_name`s (pod names) of the sessions that kept a role from expiring.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remaining: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_passwords_that_reach_sql_are_plain() {
        assert!(valid_role("stoa_shop_api"));
        assert!(!valid_role("Stoa") && !valid_role("a\"; DROP") && !valid_role("1a"));
        assert!(!valid_role(&"a".repeat(49)));
        let password = generate_password();
        assert!(valid_password(&password));
        assert!(!valid_password("short") && !valid_password(&format!("{password}'")));
        assert_eq!(login_roles("g"), ["g_a".to_owned(), "g_b".to_owned()]);
    }

    #[test]
    fn commands_name_their_arguments() {
        let expire = |end_idle_sessions| CredentialCommand::Expire {
            role: "g_a".into(),
            wait_seconds: 60,
            end_idle_sessions,
        };
        let args = expire(false).args("/dev/termination-log");
        assert_eq!(
            args,
            [
                "credentials",
                "expire",
                "--role",
                "g_a",
                "--wait-seconds",
                "60",
                "--report-file",
                "/dev/termination-log"
            ]
        );
        assert_eq!(
            expire(true).args("/r")[5..],
            ["60", "--end-idle-sessions", "--report-file", "/r"]
        );
    }
}
