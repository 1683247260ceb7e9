//! Where the bucket is and who we are: endpoint, region and credentials from the standard AWS
//! environment variables and the shared credentials file.

use std::path::PathBuf;

use url::Url;

use crate::error::{Error, ErrorKind, Result};

/// An access key and its secret, with the session token of temporary credentials.
#[derive(Clone)]
pub struct Credentials {
    pub key: String,
    pub secret: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    /// The key id is not secret and tells which identity is used; the secret and token are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, secret ****)", self.key)
    }
}

/// Everything needed to talk to one bucket.
#[derive(Debug, Clone)]
pub struct Config {
    /// The bucket's name.
    pub bucket: String,
    /// Prepended to every key: `home/` or `""`. Ends with `/` when not empty.
    pub prefix: String,
    /// An S3-compatible server's URL (path-style addressing); `None` for AWS itself.
    pub endpoint: Option<Url>,
    /// The signing region; S3-compatible servers mostly accept any.
    pub region: String,
    pub credentials: Credentials,
}

fn config_error(msg: impl Into<String>) -> Error {
    Error::with(ErrorKind::Config, msg.into())
}

impl Config {
    /// A config for `s3://BUCKET[/PREFIX]` with credentials and region from the environment.
    pub fn from_env(location: &str, endpoint: Option<&str>) -> Result<Config> {
        Self::from_lookup(location, endpoint, |name| std::env::var(name).ok())
    }

    /// [`Config::from_env`] with the environment given as a function, so tests need not touch
    /// the process's own.
    pub fn from_lookup(
        location: &str,
        endpoint: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config> {
        let rest = location
            .strip_prefix("s3://")
            .ok_or_else(|| config_error("the location must look like s3://BUCKET[/PREFIX]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(config_error("the location names no bucket"));
        }
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let endpoint = endpoint
            .map(|e| Url::parse(e).map_err(|_| config_error(format!("bad endpoint URL {e:?}"))))
            .transpose()?;
        let nonempty = |n: &str| env(n).filter(|v| !v.is_empty());
        let region = nonempty("AWS_REGION")
            .or_else(|| nonempty("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let credentials = match (
            nonempty("AWS_ACCESS_KEY_ID"),
            nonempty("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(key), Some(secret)) => Credentials {
                key,
                secret,
                token: nonempty("AWS_SESSION_TOKEN"),
            },
            _ => {
                let file = nonempty("AWS_SHARED_CREDENTIALS_FILE")
                    .map(PathBuf::from)
                    .or_else(|| dirs::home_dir().map(|h| h.join(".aws").join("credentials")));
                let profile = nonempty("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
                file.and_then(|f| from_shared_file(&f, &profile).transpose())
                    .transpose()?
                    .ok_or_else(|| {
                        config_error(
                            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                             or a profile in ~/.aws/credentials",
                        )
                    })?
            }
        };
        Ok(Config {
            bucket: bucket.to_owned(),
            prefix,
            endpoint,
            region,
            credentials,
        })
    }
}

/// The profile's keys from a shared credentials file; `None` when the file is missing.
fn from_shared_file(path: &std::path::Path, profile: &str) -> Result<Option<Credentials>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => {
            return Err(config_error(format!(
                "cannot read the credentials file {}",
                path.display()
            )))
        }
    };
    let ini = ini::Ini::load_from_str(&text).map_err(|_| {
        config_error(format!(
            "the credentials file {} is not valid",
            path.display()
        ))
    })?;
    let Some(section) = ini.section(Some(profile)) else {
        return Ok(None);
    };
    match (
        section.get("aws_access_key_id"),
        section.get("aws_secret_access_key"),
    ) {
        (Some(key), Some(secret)) => Ok(Some(Credentials {
            key: key.to_owned(),
            secret: secret.to_owned(),
            token: section.get("aws_session_token").map(str::to_owned),
        })),
        _ => Err(config_error(format!(
            "profile {profile} in {} has no aws_access_key_id and aws_secret_access_key",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn location_and_environment() {
        let c = Config::from_lookup(
            "s3://b/home/ann/",
            Some("http://127.0.0.1:9000"),
            env(&[
                ("AWS_ACCESS_KEY_ID", "AK"),
                ("AWS_SECRET_ACCESS_KEY", "SK"),
                ("AWS_DEFAULT_REGION", "eu-west-3"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str(), c.region.as_str()),
            ("b", "home/ann/", "eu-west-3")
        );
        assert_eq!(c.credentials.key, "AK");
        assert!(!format!("{:?}", c.credentials).contains("SK"));
        assert!(Config::from_lookup("b/x", None, env(&[])).is_err());
    }

    #[test]
    fn shared_credentials_file_and_profile() {
        let dir = std::env::temp_dir().join(format!("s3store-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n\
             [work]\naws_access_key_id = W\naws_secret_access_key = WS\naws_session_token = T\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = Config::from_lookup(
            "s3://b",
            None,
            env(&[("AWS_SHARED_CREDENTIALS_FILE", f), ("AWS_PROFILE", "work")]),
        )
        .unwrap();
        assert_eq!(
            (c.credentials.key.as_str(), c.credentials.token.as_deref()),
            ("W", Some("T"))
        );
        let c = Config::from_lookup("s3://b", None, env(&[("AWS_SHARED_CREDENTIALS_FILE", f)]))
            .unwrap();
        assert_eq!(c.credentials.key, "D");
        let e = Config::from_lookup(
            "s3://b",
            None,
            env(&[("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/x")]),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
