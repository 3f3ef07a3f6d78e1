//! The users the broker accepts, from a TOML file:
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! password = "…"
//! ```
//!
//! The file must be readable by its owner only. Each user's SCRAM credentials (salt,
//! iterations, StoredKey, ServerKey, for both hashes) are derived once, here; the
//! passwords themselves are not kept.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::scram::{self, ScramCredential};
use super::{Mechanism, Password, SCRAM_ITERATIONS};
use crate::{Error, Result};

/// The users that may authenticate, with what the server needs to check them.
pub struct Users {
    by_name: HashMap<String, Credentials>,
    /// Keys the stand-in credentials of unknown users, so that a client cannot tell an
    /// unknown user from a known one by the salt (which stays the same across attempts).
    decoy_key: [u8; 32],
    decoy_plain: [u8; 32],
}

struct Credentials {
    /// SHA-256 of the password, compared in constant time for PLAIN.
    plain: [u8; 32],
    scram_sha256: ScramCredential,
    scram_sha512: ScramCredential,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFileShape {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password: Password,
}

impl Users {
    /// Reads the users file at `path`. Refuses a file that group or others may read,
    /// one that is not valid TOML of the expected shape, and one with an empty or
    /// repeated name or an empty password.
    pub fn load(path: impl AsRef<Path>) -> Result<Users> {
        let path = path.as_ref();
        let read_error = |source| Error::Read {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read_error)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file.metadata().map_err(read_error)?.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(Error::UsersFileReadable {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(read_error)?;
        Users::parse(&text, path)
    }

    /// Parses the text of a users file; `path` names it in errors. Does not look at
    /// permissions: [`load`](Users::load) does.
    pub fn parse(text: &str, path: &Path) -> Result<Users> {
        let shape: UsersFileShape = toml::from_str(text).map_err(|e| Error::UsersFileSyntax {
            path: path.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        Users::build(
            path,
            shape
                .user
                .into_iter()
                .map(|entry| (entry.name, entry.password)),
        )
    }

    /// Users given in code (tests, embedded brokers), checked as a file would be.
    pub fn from_entries<N, P>(entries: impl IntoIterator<Item = (N, P)>) -> Result<Users>
    where
        N: Into<String>,
        P: Into<Password>,
    {
        Users::build(
            Path::new("(users given in code)"),
            entries
                .into_iter()
                .map(|(name, password)| (name.into(), password.into())),
        )
    }

    fn build(path: &Path, entries: impl Iterator<Item = (String, Password)>) -> Result<Users> {
        let mut by_name = HashMap::new();
        for (index, (name, password)) in entries.enumerate() {
            if name.is_empty() {
                return Err(Error::EmptyUserName {
                    path: path.to_owned(),
                    number: index + 1,
                });
            }
            if password.is_empty() {
                return Err(Error::EmptyPassword {
                    path: path.to_owned(),
                    name,
                });
            }
            match by_name.entry(name) {
                Entry::Occupied(taken) => {
                    return Err(Error::DuplicateUser {
                        path: path.to_owned(),
                        name: taken.key().clone(),
                    });
                }
                Entry::Vacant(slot) => {
                    slot.insert(Credentials::derive(&password));
                }
            }
        }
        if by_name.is_empty() {
            return Err(Error::NoUsers {
                path: path.to_owned(),
            });
        }
        let mut decoy_key = [0; 32];
        let mut decoy_plain = [0; 32];
        scram::fill_random(&mut decoy_key);
        scram::fill_random(&mut decoy_plain);
        Ok(Users {
            by_name,
            decoy_key,
            decoy_plain,
        })
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none (never true of a loaded file).
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Whether `name` is a user.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The user names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether `password` is `user`'s, in time that does not depend on either.
    pub(super) fn check_plain(&self, user: &str, password: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(password).into();
        let (expected, known) = match self.by_name.get(user) {
            Some(credentials) => (&credentials.plain, true),
            None => (&self.decoy_plain, false),
        };
        bool::from(digest.ct_eq(expected)) && known
    }

    /// `user`'s SCRAM credential for `mechanism`, and whether the user exists. For an
    /// unknown user, a stand-in that looks like a real one and never verifies.
    pub(super) fn scram(&self, user: &str, mechanism: Mechanism) -> (ScramCredential, bool) {
        match self.by_name.get(user) {
            Some(credentials) => {
                let credential = match mechanism {
                    Mechanism::ScramSha512 => &credentials.scram_sha512,
                    Mechanism::ScramSha256 | Mechanism::Plain => &credentials.scram_sha256,
                };
                (credential.clone(), true)
            }
            None => (
                ScramCredential::decoy(mechanism, &self.decoy_key, user),
                false,
            ),
        }
    }
}

impl Credentials {
    fn derive(password: &Password) -> Credentials {
        let bytes = password.expose().as_bytes();
        Credentials {
            plain: Sha256::digest(bytes).into(),
            scram_sha256: ScramCredential::derive(
                Mechanism::ScramSha256,
                bytes,
                scram::new_salt(),
                SCRAM_ITERATIONS,
            ),
            scram_sha512: ScramCredential::derive(
                Mechanism::ScramSha512,
                bytes,
                scram::new_salt(),
                SCRAM_ITERATIONS,
            ),
        }
    }
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("names", &self.names())
            .finish_non_exhaustive()
    }
}

/// Where a TOML error is, and what it is, without quoting the line (it may be a
/// password's) or a value that serde found of the wrong type (a password without quotes).
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let mut message = error.message().trim().replace('\n', "; ");
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        message = strip_backquoted(&message);
    }
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("{message} at line {line}, column {column}")
        }
        None => message,
    }
}

fn strip_backquoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '`' {
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out.replace("  ", " ").replace(" ,", ",")
}

/// The users file as the broker holds it: read at start, and again on
/// [`reload`](UsersFile::reload) (SIGHUP). Exchanges in progress keep the users they
/// started with.
pub struct UsersFile {
    path: PathBuf,
    users: ArcSwap<Users>,
}

impl UsersFile {
    /// Loads the file (see [`Users::load`]).
    pub fn load(path: impl Into<PathBuf>) -> Result<UsersFile> {
        let path = path.into();
        let users = Users::load(&path)?;
        Ok(UsersFile {
            path,
            users: ArcSwap::from_pointee(users),
        })
    }

    /// The users now in force; hand them to an [`Authenticator`](super::Authenticator).
    pub fn users(&self) -> Arc<Users> {
        self.users.load_full()
    }

    /// Reads the file again. On an error the users in force stay as they were.
    pub fn reload(&self) -> Result<()> {
        let users = Users::load(&self.path)?;
        self.users.store(Arc::new(users));
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for UsersFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsersFile")
            .field("path", &self.path)
            .field("users", &*self.users.load())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("users.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    const TWO_USERS: &str = r#"
[[user]]
name = "alice"
password = "wonderland"

[[user]]
name = "bob"
password = "builder"
"#;

    #[test]
    fn a_private_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), TWO_USERS, 0o600);
        let users = Users::load(&path).unwrap();
        assert_eq!(users.names(), ["alice", "bob"]);
        assert!(users.check_plain("alice", b"wonderland"));
        assert!(!users.check_plain("alice", b"builder"));
        assert!(!users.check_plain("carol", b"wonderland"));
        let debug = format!("{users:?}");
        assert!(
            !debug.contains("wonderland") && !debug.contains("builder"),
            "{debug}"
        );
    }

    #[test]
    fn a_file_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let path = write(dir.path(), TWO_USERS, mode);
            let err = Users::load(&path).unwrap_err().to_string();
            let shown = path.display();
            assert_eq!(
                err,
                format!(
                    "'{shown}' holds passwords but group or others may read it (mode {mode:04o}); \
                     allow only its owner: `chmod 600 '{shown}'`"
                )
            );
        }
        let path = write(dir.path(), TWO_USERS, 0o400);
        assert_eq!(Users::load(&path).unwrap().len(), 2);
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Users::load("/nonexistent/users.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read '/nonexistent/users.toml': "),
            "{err}"
        );
    }

    #[test]
    fn toml_errors_name_the_file_and_the_place_but_not_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "[[user]]\nname = \"alice\"\npassword = \"open sesame\n",
                "line 3",
            ),
            ("[[user]]\nname = \"alice\"\npassword = 123456\n", "line 3"),
            (
                "[[user]]\nname = \"alice\"\npasswd = \"open sesame\"\n",
                "passwd",
            ),
            ("[[user]]\nname = \"alice\"\n", "password"),
            ("user = 1\n", "line 1"),
        ];
        for (text, expected) in cases {
            let path = write(dir.path(), text, 0o600);
            let err = Users::load(&path).unwrap_err();
            assert!(matches!(err, Error::UsersFileSyntax { .. }), "{err:?}");
            let err = err.to_string();
            assert!(
                err.starts_with(&format!("'{}' is not a valid users file: ", path.display())),
                "{err}"
            );
            assert!(err.contains(expected), "{err} lacks {expected}");
            assert!(!err.contains("sesame") && !err.contains("123456"), "{err}");
        }
    }

    #[test]
    fn duplicate_and_empty_names_and_empty_passwords_are_refused() {
        let path = Path::new("users.toml");
        let dup = "[[user]]\nname = \"alice\"\npassword = \"a\"\n[[user]]\nname = \"alice\"\npassword = \"b\"\n";
        assert_eq!(
            Users::parse(dup, path).unwrap_err().to_string(),
            "'users.toml' names user 'alice' more than once; each user may appear once"
        );
        let empty = "[[user]]\nname = \"alice\"\npassword = \"a\"\n[[user]]\nname = \"\"\npassword = \"b\"\n";
        assert_eq!(
            Users::parse(empty, path).unwrap_err().to_string(),
            "'users.toml': user number 2 has an empty name"
        );
        let no_password = "[[user]]\nname = \"alice\"\npassword = \"\"\n";
        assert_eq!(
            Users::parse(no_password, path).unwrap_err().to_string(),
            "'users.toml': user 'alice' has an empty password"
        );
        let err = Users::parse("", path).unwrap_err().to_string();
        assert!(err.starts_with("'users.toml' names no user"), "{err}");
    }

    #[test]
    fn scram_credentials_are_derived_once_with_fresh_salts() {
        let users = Users::from_entries([("alice", "wonderland")]).unwrap();
        let (a, known) = users.scram("alice", Mechanism::ScramSha256);
        let (b, _) = users.scram("alice", Mechanism::ScramSha256);
        let (c, _) = users.scram("alice", Mechanism::ScramSha512);
        assert!(known);
        assert_eq!(a.salt(), b.salt());
        assert_ne!(a.salt(), c.salt());
        assert_eq!(a.iterations(), SCRAM_ITERATIONS);
        let (d1, known) = users.scram("mallory", Mechanism::ScramSha256);
        let (d2, _) = users.scram("mallory", Mechanism::ScramSha256);
        assert!(!known);
        assert_eq!(
            d1.salt(),
            d2.salt(),
            "a decoy's salt is as stable as a user's"
        );
        assert_eq!(d1.salt().len(), a.salt().len());
        assert_eq!(d1.iterations(), a.iterations());
    }

    #[test]
    fn reload_replaces_users_and_keeps_them_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), TWO_USERS, 0o600);
        let file = UsersFile::load(&path).unwrap();
        let before = file.users();
        write(
            dir.path(),
            "[[user]]\nname = \"carol\"\npassword = \"c\"\n",
            0o600,
        );
        file.reload().unwrap();
        assert_eq!(file.users().names(), ["carol"]);
        assert_eq!(before.names(), ["alice", "bob"], "a held snapshot stays");
        write(dir.path(), "not toml [", 0o600);
        assert!(file.reload().is_err());
        assert_eq!(file.users().names(), ["carol"]);
    }
}
