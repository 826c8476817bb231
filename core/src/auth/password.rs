//! Password hashing (argon2id, PHC strings) and the rules names and
//! passwords obey.
//!
//! Hashing and verifying cost tens of milliseconds of one core and
//! `memory_kib` of memory each: callers run them on the blocking pool,
//! under the node's bound on verifications at once (see
//! [`Users`](super::Users)).

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};

use super::AuthError;

/// Shortest user name, in characters.
pub const NAME_CHARS_MIN: usize = 1;
/// Longest user name, in characters.
pub const NAME_CHARS_MAX: usize = 64;
/// Shortest password, in bytes. Eight is NIST SP 800-63B's minimum for a
/// password chosen by its user.
pub const PASSWORD_BYTES_MIN: usize = 8;
/// Longest password, in bytes: long passphrases fit, and a client cannot
/// make the node hash megabytes.
pub const PASSWORD_BYTES_MAX: usize = 1024;

/// Most memory a stored hash may ask a verification for, in KiB (256 MiB).
/// Hashes carry their own parameters; a corrupt or planted record asking
/// for more is refused instead of verified, so one record cannot exhaust
/// the node's memory.
pub const MEMORY_KIB_MAX: u32 = 256 * 1024;
/// Most passes a stored hash may ask for (see [`MEMORY_KIB_MAX`]).
pub const ITERATIONS_MAX: u32 = 64;
/// Most lanes a stored hash may ask for (see [`MEMORY_KIB_MAX`]).
pub const PARALLELISM_MAX: u32 = 16;

/// argon2id's cost parameters for new hashes. Existing hashes keep the
/// parameters they were made with (the PHC string records them), so
/// raising these takes effect as passwords are set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory per hash, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes (argon2's `p`); the work runs on one thread whatever this is.
    pub parallelism: u32,
}

impl Default for PasswordParams {
    /// OWASP's minimum for argon2id: 19 MiB, 2 passes, 1 lane (Password
    /// Storage Cheat Sheet), tens of milliseconds per hash on a server
    /// core.
    fn default() -> Self {
        PasswordParams {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl PasswordParams {
    /// Cheap parameters for tests (64 KiB, one pass): never for stored
    /// passwords.
    pub fn for_tests() -> Self {
        PasswordParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    /// The hasher, if the parameters are within argon2's bounds and the
    /// node's ([`MEMORY_KIB_MAX`], [`ITERATIONS_MAX`],
    /// [`PARALLELISM_MAX`]).
    fn hasher(&self) -> Result<Argon2<'static>, AuthError> {
        let too_costly = self.memory_kib > MEMORY_KIB_MAX
            || self.iterations > ITERATIONS_MAX
            || self.parallelism > PARALLELISM_MAX;
        if too_costly {
            return Err(AuthError::Hash {
                reason: format!(
                    "parameters {self:?} exceed m={MEMORY_KIB_MAX} KiB, t={ITERATIONS_MAX}, p={PARALLELISM_MAX}"
                ),
            });
        }
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| AuthError::Hash {
                reason: format!("parameters {self:?}: {e}"),
            })?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Hash `password` with argon2id under `params` and a fresh random salt
/// (16 bytes from the operating system), as a PHC string
/// (`$argon2id$v=19$m=...,t=...,p=...$<salt>$<hash>`). Blocks for the
/// hash's duration.
pub fn hash_password(params: &PasswordParams, password: &str) -> Result<String, AuthError> {
    let hash = params
        .hasher()?
        .hash_password(password.as_bytes())
        .map_err(|e| AuthError::Hash {
            reason: e.to_string(),
        })?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `phc`. The comparison of the
/// computed hash is constant-time (argon2's verifier). Anything but a
/// well-formed argon2id hash within the node's cost bounds is `false`,
/// never a panic. Blocks for the hash's duration.
pub fn verify_password(phc: &str, password: &str) -> bool {
    match parse_phc(phc) {
        Some(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        None => false,
    }
}

/// `phc` parsed, if it is argon2id with a salt, an output and parameters
/// within the node's bounds.
fn parse_phc(phc: &str) -> Option<PasswordHash> {
    let hash = PasswordHash::new(phc).ok()?;
    if hash.algorithm != argon2::ARGON2ID_IDENT || hash.salt.is_none() || hash.hash.is_none() {
        return None;
    }
    let params = Params::try_from(&hash).ok()?;
    let within = params.m_cost() <= MEMORY_KIB_MAX
        && params.t_cost() <= ITERATIONS_MAX
        && params.p_cost() <= PARALLELISM_MAX;
    within.then_some(hash)
}

/// Whether `phc` is a hash [`verify_password`] would check (rather than
/// refuse outright).
pub fn is_well_formed(phc: &str) -> bool {
    parse_phc(phc).is_some()
}

/// Check a user name: 1 to 64 characters of `A-Z a-z 0-9 _ . -` (no
/// separators, whitespace or lookalike characters, so names are safe in
/// keys, logs and command lines).
pub fn validate_name(name: &str) -> Result<(), AuthError> {
    let invalid = |reason| Err(AuthError::InvalidName { reason });
    let chars = name.chars().count();
    if chars < NAME_CHARS_MIN {
        return invalid("it is empty");
    }
    if chars > NAME_CHARS_MAX {
        return invalid("longer than 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return invalid("only A-Z, a-z, 0-9, '_', '.' and '-' are allowed");
    }
    Ok(())
}

/// Check a new password: 8 to 1024 bytes.
pub fn validate_password(password: &str) -> Result<(), AuthError> {
    if password.len() < PASSWORD_BYTES_MIN {
        return Err(AuthError::InvalidPassword {
            reason: "shorter than 8 bytes",
        });
    }
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(AuthError::InvalidPassword {
            reason: "longer than 1024 bytes",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_and_no_other() {
        let params = PasswordParams::for_tests();
        let phc = hash_password(&params, "correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(is_well_formed(&phc));
        assert!(verify_password(&phc, "correct horse"));
        assert!(!verify_password(&phc, "correct horsf"));
        assert!(!verify_password(&phc, ""));
        // A fresh salt each time: the same password hashes differently.
        let again = hash_password(&params, "correct horse").unwrap();
        assert_ne!(phc, again);
        assert!(verify_password(&again, "correct horse"));
    }

    #[test]
    fn the_default_is_owasps_argon2id_minimum() {
        let params = PasswordParams::default();
        assert_eq!(
            (params.memory_kib, params.iterations, params.parallelism),
            (19456, 2, 1)
        );
        assert!(params.hasher().is_ok());
    }

    #[test]
    fn malformed_or_costly_hashes_are_false_not_panics() {
        let good = hash_password(&PasswordParams::for_tests(), "password1").unwrap();
        let salt_and_hash = good.rsplitn(3, '$').take(2).collect::<Vec<_>>();
        let (hash, salt) = (salt_and_hash[0], salt_and_hash[1]);
        let bad = [
            String::new(),
            "$".into(),
            "not a hash".into(),
            "$argon2id$".into(),
            "$argon2id$v=19$m=64,t=1,p=1$".into(),
            format!("$argon2id$v=19$m=64,t=1,p=1${salt}"),
            format!("$argon2id$v=19$m=64,t=1,p=1${salt}$!!!"),
            format!("$argon2i$v=19$m=64,t=1,p=1${salt}${hash}"),
            format!("$scrypt$v=19$m=64,t=1,p=1${salt}${hash}"),
            format!("$argon2id$v=19$m=4194304,t=1,p=1${salt}${hash}"),
            format!("$argon2id$v=19$m=64,t=1000,p=1${salt}${hash}"),
            format!("$argon2id$v=19$m=64,t=1,p=0${salt}${hash}"),
            format!("$argon2id$v=7$m=64,t=1,p=1${salt}${hash}"),
            good[..good.len() - 3].to_owned(),
            format!("{good}\u{0}"),
        ];
        for phc in &bad {
            assert!(!verify_password(phc, "password1"), "{phc:?} verified");
        }
        assert!(verify_password(&good, "password1"));
    }

    #[test]
    fn parameters_beyond_the_bounds_are_refused() {
        for params in [
            PasswordParams {
                memory_kib: MEMORY_KIB_MAX + 1,
                ..PasswordParams::for_tests()
            },
            PasswordParams {
                iterations: 0,
                ..PasswordParams::for_tests()
            },
            PasswordParams {
                parallelism: PARALLELISM_MAX + 1,
                ..PasswordParams::for_tests()
            },
        ] {
            assert!(
                matches!(
                    hash_password(&params, "password1"),
                    Err(AuthError::Hash { .. })
                ),
                "{params:?}"
            );
        }
    }

    #[test]
    fn names_and_passwords_obey_their_rules() {
        for good in ["a", "alice", "svc.cart-reader_2", &"n".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            &"n".repeat(65),
            "al ice",
            "alice/",
            "user:1",
            "é",
            "alice\n",
            "\u{0430}lice",
        ] {
            assert!(
                matches!(validate_name(bad), Err(AuthError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
        for good in ["12345678", &"p".repeat(1024), "pässwörd"] {
            assert!(validate_password(good).is_ok(), "{good:?}");
        }
        for bad in ["", "1234567", &"p".repeat(1025)] {
            assert!(
                matches!(
                    validate_password(bad),
                    Err(AuthError::InvalidPassword { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }
}
