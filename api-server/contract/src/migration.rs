//! Schema migrations as both programs see them: how a migration is marked as a contract
//! step, the `stoa-api migrate` command line the operator runs in a Job, its exit codes,
//! and the report it leaves as the Job's termination message.
//!
//! Expand steps are additive: a binary keeps working when the database holds expand steps
//! it does not know. Contract steps remove what an older binary may still use, so they run
//! only after every pod runs the new release, and a binary that does not know a contract
//! step already applied refuses to migrate ([`EXIT_NEWER_CONTRACT`]).

use serde::{Deserialize, Serialize};

/// sqlx records a migration's file name, minus the version and with `_` turned into
/// spaces, as its `description` in `_sqlx_migrations`. A migration named
/// `<version>_contract_<what>.up.sql` is therefore recognisable as a contract step even by
/// a binary that does not embed it.
pub const CONTRACT_PREFIX: &str = "contract ";

/// Whether a migration with this description (as sqlx records it) is a contract step.
pub fn is_contract(description: &str) -> bool {
    description.starts_with(CONTRACT_PREFIX)
}

/// Which migrations a run applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Expand steps only: safe while pods of the previous release still serve.
    Expand,
    /// Every pending step, contract steps included: once no older pod remains.
    All,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::All => "all",
        }
    }
}

/// `stoa-api migrate` succeeded (or had nothing to do).
pub const EXIT_OK: i32 = 0;
/// Any other failure (unreachable database, a failing migration, a dirty schema).
pub const EXIT_FAILED: i32 = 1;
/// The database holds a contract step this binary does not know: this binary is older than
/// the schema's last contraction, and serving it may fail. Retrying cannot help; only an
/// explicit approval (`--allow-newer-contract`) or a newer image can.
pub const EXIT_NEWER_CONTRACT: i32 = 3;

/// What a migration Job runs, after the binary name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrateCommand {
    pub phase: Phase,
    /// Roll back past a contraction anyway (the platform team approved this image).
    pub allow_newer_contract: bool,
    /// Where to write the [`MigrationReport`] (the Job uses the termination-message path).
    pub report_file: Option<String>,
}

impl MigrateCommand {
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "migrate".to_owned(),
            "--phase".to_owned(),
            self.phase.as_str().to_owned(),
        ];
        if self.allow_newer_contract {
            args.push("--allow-newer-contract".to_owned());
        }
        if let Some(path) = &self.report_file {
            args.push("--report-file".to_owned());
            args.push(path.clone());
        }
        args
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Every migration of the phase is applied.
    Applied,
    /// Refused: the database holds contract steps this binary does not know.
    NewerContract,
    /// Failed for another reason; `message` says why.
    Failed,
}

/// The result of one `stoa-api migrate` run, as one line of JSON. Kubernetes keeps at most
/// 4096 bytes of a termination message, so lists are short by construction (versions only)
/// and `message` is bounded by [`MigrationReport::to_line`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationReport {
    pub outcome: Outcome,
    pub phase: Phase,
    /// The newest successfully applied version after the run (`None`: no schema at all).
    pub schema_version: Option<i64>,
    /// The newest expand step this binary embeds: what its pods need to be ready.
    pub required_version: i64,
    /// Versions this run applied.
    #[serde(default)]
    pub applied: Vec<i64>,
    /// Contract steps in the database that this binary does not embed.
    #[serde(default)]
    pub unknown_contract: Vec<i64>,
    /// Expand steps in the database that this binary does not embed (tolerated).
    #[serde(default)]
    pub unknown_expand: Vec<i64>,
    /// Contract steps this binary embeds that are not applied yet.
    #[serde(default)]
    pub pending_contract: Vec<i64>,
    #[serde(default)]
    pub message: String,
}

/// The termination message budget Kubernetes enforces.
pub const REPORT_LIMIT: usize = 4096;

impl MigrationReport {
    /// One JSON line within [`REPORT_LIMIT`] (the message is shortened if needed).
    pub fn to_line(&self) -> String {
        let mut report = self.clone();
        loop {
            let line = serde_json::to_string(&report).unwrap_or_default();
            if line.len() <= REPORT_LIMIT || report.message.is_empty() {
                return line;
            }
            let keep = report
                .message
                .len()
                .saturating_sub(line.len() - REPORT_LIMIT + 3);
            let mut cut = keep.min(report.message.len());
            while !report.message.is_char_boundary(cut) {
                cut -= 1;
            }
            report.message.truncate(cut);
            report.message.push('…');
        }
    }

    /// Parses a termination message; `None` when it is not a report (for example the
    /// last log lines Kubernetes substitutes when the process wrote nothing).
    pub fn parse(message: &str) -> Option<MigrationReport> {
        serde_json::from_str(message.trim()).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn contract_steps_are_recognised_by_their_recorded_description() {
        assert!(is_contract("contract drop legacy bio"));
        assert!(!is_contract("realworld"));
        assert!(!is_contract("contractor table"));
    }

    #[test]
    fn the_command_line_round_trips_its_options() {
        let command = MigrateCommand {
            phase: Phase::Expand,
            allow_newer_contract: true,
            report_file: Some("/dev/termination-log".into()),
        };
        assert_eq!(
            command.args(),
            [
                "migrate",
                "--phase",
                "expand",
                "--allow-newer-contract",
                "--report-file",
                "/dev/termination-log"
            ]
        );
    }

    #[test]
    fn a_report_fits_a_termination_message() {
        let report = MigrationReport {
            outcome: Outcome::Failed,
            phase: Phase::All,
            schema_version: Some(1),
            required_version: 2,
            applied: vec![],
            unknown_contract: vec![],
            unknown_expand: vec![],
            pending_contract: vec![],
            message: "é".repeat(5000),
        };
        let line = report.to_line();
        assert!(line.len() <= REPORT_LIMIT, "{}", line.len());
        let parsed = MigrationReport::parse(&line).unwrap();
        assert_eq!(parsed.outcome, Outcome::Failed);
        assert!(MigrationReport::parse("Error: something went wrong").is_none());
    }
}
