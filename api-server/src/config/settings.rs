//! How one setting is read: its variable, default, bound and how it prints. Reading a
//! setting also records its effective value (redacted when secret), so `check-config` shows
//! exactly what was parsed and a new setting is one line in `Config::build`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, LogFormat, Quota, Secret, redact_url};

/// A kind of value a setting can hold: how it is parsed and how it prints.
pub(super) trait Value: Sized {
    fn parse(raw: &str) -> Result<Self, String>;
    fn show(&self) -> String;
}

impl Value for Duration {
    fn parse(raw: &str) -> Result<Self, String> {
        humantime::parse_duration(raw).map_err(|e| format!("{e} (examples: 15m, 7d, 500ms)"))
    }
    fn show(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn parse(raw: &str) -> Result<Self, String> {
                raw.parse().map_err(|e: std::num::ParseIntError| e.to_string())
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
numbers!(u32, u64, usize);

impl Value for bool {
    fn parse(raw: &str) -> Result<Self, String> {
        match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err("expected true or false".into()),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Value for SocketAddr {
    fn parse(raw: &str) -> Result<Self, String> {
        raw.parse()
            .map_err(|e| format!("{e} (expected host:port, e.g. 0.0.0.0:8080)"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Value for String {
    fn parse(raw: &str) -> Result<Self, String> {
        Ok(raw.to_owned())
    }
    fn show(&self) -> String {
        self.clone()
    }
}

impl Value for PathBuf {
    fn parse(raw: &str) -> Result<Self, String> {
        Ok(PathBuf::from(raw))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl Value for Quota {
    fn parse(raw: &str) -> Result<Self, String> {
        Quota::parse(raw)
    }
    fn show(&self) -> String {
        format!("{}/{}", self.burst, humantime::format_duration(self.period))
    }
}

impl Value for LogFormat {
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "json" => Ok(LogFormat::Json),
            "pretty" | "text" => Ok(LogFormat::Pretty),
            _ => Err("expected json or pretty".into()),
        }
    }
    fn show(&self) -> String {
        match self {
            LogFormat::Json => "json",
            LogFormat::Pretty => "pretty",
        }
        .into()
    }
}

/// Browser origins allowed by CORS: comma-separated, each `*` or an http(s) origin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Origins(pub Vec<String>);

impl Value for Origins {
    fn parse(raw: &str) -> Result<Self, String> {
        let origins: Vec<String> = raw
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        match origins
            .iter()
            .find(|o| *o != "*" && !(o.starts_with("http://") || o.starts_with("https://")))
        {
            Some(bad) => Err(format!(
                "{bad:?}: each origin must be `*` or start with http:// or https://"
            )),
            None => Ok(Origins(origins)),
        }
    }
    fn show(&self) -> String {
        self.0.join(",")
    }
}

/// Where clients reach the API (`STOA_PUBLIC_URL`), kept as its origin:
/// `scheme://host[:port]`, lower case, without a default port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicOrigin {
    pub origin: String,
    pub https: bool,
}

impl Value for PublicOrigin {
    fn parse(raw: &str) -> Result<Self, String> {
        let uri: http::Uri = raw.trim().parse().map_err(|_| "is not a URL".to_owned())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("must start with https:// (or http:// for local use)".into()),
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty() && !a.as_str().contains('@'))
            .ok_or("must name a host (and no user)")?;
        if uri.path() != "/" || uri.query().is_some() {
            return Err(
                "must be an origin only (no path or query), e.g. https://api.example.com".into(),
            );
        }
        let default_port = if https { 443 } else { 80 };
        let host = authority.host().to_ascii_lowercase();
        let origin = match authority.port_u16() {
            Some(port) if port != default_port => {
                format!("{}://{host}:{port}", uri.scheme_str().unwrap_or_default())
            }
            _ => format!("{}://{host}", uri.scheme_str().unwrap_or_default()),
        };
        Ok(PublicOrigin { origin, https })
    }
    fn show(&self) -> String {
        self.origin.clone()
    }
}

type Check<T> = Box<dyn Fn(&T) -> Result<(), String>>;

/// One setting: its variable, its default and what values it accepts.
pub(super) struct Setting<T> {
    name: &'static str,
    default: T,
    checks: Vec<Check<T>>,
    /// The checks in words, for the settings reference.
    bounds: Vec<String>,
}

/// A setting as declared, whatever the environment holds: what the settings reference
/// (`stoa-api reference settings`) is generated from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// The part of `Config::build` that reads it.
    pub section: &'static str,
    pub name: &'static str,
    /// The default as it prints (for a value without one, what its absence means).
    pub default: String,
    pub bounds: Vec<String>,
    /// Also accepted as a file named by `<NAME>_FILE` (secrets).
    pub file: bool,
}

impl<T: Value + 'static> Setting<T> {
    pub fn new(name: &'static str, default: T) -> Self {
        Setting {
            name,
            default,
            checks: Vec::new(),
            bounds: Vec::new(),
        }
    }

    pub fn at_least(mut self, min: T) -> Self
    where
        T: PartialOrd,
    {
        self.bounds.push(format!("at least {}", min.show()));
        self.checks.push(Box::new(move |v| {
            if *v >= min {
                Ok(())
            } else {
                Err(format!("must be at least {}", min.show()))
            }
        }));
        self
    }

    /// `why` says what a larger value would cost.
    pub fn at_most(mut self, max: T, why: &'static str) -> Self
    where
        T: PartialOrd,
    {
        self.bounds.push(format!("at most {} ({why})", max.show()));
        self.checks.push(Box::new(move |v| {
            if *v <= max {
                Ok(())
            } else {
                Err(format!("must be at most {} ({why})", max.show()))
            }
        }));
        self
    }
}

/// Reads settings from an environment and records what each one resolved to.
pub(super) struct EnvReader<'e, F: Fn(&str) -> Option<String>> {
    lookup: &'e F,
    shown: BTreeMap<&'static str, String>,
    section: &'static str,
    declared: Vec<Declared>,
}

impl<'e, F: Fn(&str) -> Option<String>> EnvReader<'e, F> {
    pub fn new(lookup: &'e F) -> Self {
        EnvReader {
            lookup,
            shown: BTreeMap::new(),
            section: "General",
            declared: Vec::new(),
        }
    }

    /// Files the settings read from now on under `section` in the reference.
    pub fn section(&mut self, section: &'static str) {
        self.section = section;
    }

    fn declare(&mut self, name: &'static str, default: String, bounds: Vec<String>, file: bool) {
        self.declared.push(Declared {
            section: self.section,
            name,
            default,
            bounds,
            file,
        });
    }

    fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// The setting's value, or its default when unset; checked against its bounds.
    pub fn read<T: Value>(&mut self, setting: Setting<T>) -> Result<T, ConfigError> {
        let Setting {
            name,
            default,
            checks,
            bounds,
        } = setting;
        self.declare(name, default.show(), bounds, false);
        let value = match self.raw(name) {
            None => default,
            Some(raw) => T::parse(&raw).map_err(|reason| ConfigError::Invalid {
                name,
                value: raw,
                reason,
            })?,
        };
        if let Some(reason) = checks.iter().find_map(|check| check(&value).err()) {
            return Err(ConfigError::Invalid {
                name,
                value: value.show(),
                reason,
            });
        }
        self.shown.insert(name, value.show());
        Ok(value)
    }

    /// A setting with no default; `unset` says what its absence means.
    pub fn optional<T: Value>(
        &mut self,
        name: &'static str,
        unset: &'static str,
    ) -> Result<Option<T>, ConfigError> {
        self.declare(name, unset.to_owned(), Vec::new(), false);
        let value = self
            .raw(name)
            .map(|raw| {
                T::parse(&raw).map_err(|reason| ConfigError::Invalid {
                    name,
                    value: raw,
                    reason,
                })
            })
            .transpose()?;
        let shown = value.as_ref().map_or_else(|| unset.to_owned(), T::show);
        self.shown.insert(name, shown);
        Ok(value)
    }

    /// A URL that may carry a password, given as `<NAME>` or as a file `<NAME>_FILE`;
    /// returns it with the file's path (so it can be watched). Printed redacted.
    pub fn secret_url(
        &mut self,
        name: &'static str,
        schemes: &[&str],
        unset: &'static str,
    ) -> Result<Option<(Secret, Option<PathBuf>)>, ConfigError> {
        self.declare(name, unset.to_owned(), Vec::new(), true);
        let found = self.secret_value(name)?;
        if let Some((url, _)) = &found {
            let ok = schemes
                .iter()
                .any(|scheme| url.expose().starts_with(&format!("{scheme}://")));
            if !ok {
                return Err(ConfigError::Invalid {
                    name,
                    // Never echo a URL: it may carry a password.
                    value: "<redacted>".into(),
                    reason: format!("must start with {}", schemes.join(":// or ") + "://"),
                });
            }
        }
        self.show_secret_url(
            name,
            found.as_ref().map(|(url, file)| (url, file.as_ref())),
            unset,
        );
        Ok(found)
    }

    /// A secret that is not a URL (a password), given as `<NAME>` or as a file
    /// `<NAME>_FILE`. Printed as `<redacted>`.
    pub fn secret(
        &mut self,
        name: &'static str,
        unset: &'static str,
    ) -> Result<Option<Secret>, ConfigError> {
        self.declare(name, unset.to_owned(), Vec::new(), true);
        let found = self.secret_value(name)?;
        let shown = match &found {
            None => unset.to_owned(),
            Some((_, None)) => "<redacted>".to_owned(),
            Some((_, Some(file))) => format!("<redacted> (from file {})", file.display()),
        };
        self.shown.insert(name, shown);
        Ok(found.map(|(secret, _)| secret))
    }

    /// `<NAME>` or the contents of the file `<NAME>_FILE`, with the file's path.
    fn secret_value(
        &self,
        name: &'static str,
    ) -> Result<Option<(Secret, Option<PathBuf>)>, ConfigError> {
        Ok(match (self.raw(name), self.raw(&format!("{name}_FILE"))) {
            (Some(_), Some(_)) => return Err(ConfigError::Ambiguous { name }),
            (Some(value), None) => Some((Secret::new(value), None)),
            (None, Some(path)) => {
                let value =
                    read_secret_file(&path).map_err(|reason| ConfigError::UnreadableFile {
                        name,
                        path: path.clone(),
                        reason,
                    })?;
                Some((value, Some(PathBuf::from(path))))
            }
            (None, None) => None,
        })
    }

    /// Records a secret URL's redacted form (also used for defaults filled in later).
    pub fn show_secret_url(
        &mut self,
        name: &'static str,
        url: Option<(&Secret, Option<&PathBuf>)>,
        unset: &'static str,
    ) {
        let shown = match url {
            None => unset.to_owned(),
            Some((url, None)) => redact_url(url.expose()),
            Some((url, Some(file))) => {
                format!(
                    "{} (from file {})",
                    redact_url(url.expose()),
                    file.display()
                )
            }
        };
        self.shown.insert(name, shown);
    }

    /// Records a value that is derived rather than read (e.g. the mode).
    pub fn show(&mut self, name: &'static str, value: impl fmt::Display) {
        self.shown.insert(name, value.to_string());
    }

    /// Every setting read, with its effective value (secrets redacted), and every
    /// setting declared.
    pub fn finish(self) -> (BTreeMap<&'static str, String>, Vec<Declared>) {
        (self.shown, self.declared)
    }
}

/// Reads a mounted secret file; surrounding whitespace (a trailing newline) is dropped.
pub fn read_secret_file(path: &str) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("file is empty".into());
    }
    Ok(Secret::new(trimmed))
}
