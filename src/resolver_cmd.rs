//! `isthmus resolver …`: tooling for resolver modules.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use isthmus_resolvers::check::{CheckOptions, check};
use isthmus_resolvers::host::hex;
use isthmus_resolvers::{Host, ResolverLimits};

/// Resolver subcommands.
#[derive(Subcommand, Debug)]
pub enum ResolverCommand {
    /// Check that a module's merge is a join (commutative, associative,
    /// idempotent, deterministic) by running it in the real host on
    /// generated sibling sets. Exit status 0 only if every law holds, 1 if
    /// one fails (with a counterexample), 2 if the module cannot be loaded.
    Check {
        /// The resolver module (`.wasm`, built for wasm32-unknown-unknown).
        file: PathBuf,
        /// Seed of the generated cases (printed; default: random).
        #[arg(long)]
        seed: Option<u64>,
        /// Sibling sets generated per set size (2, 3 and 4 siblings).
        #[arg(long, default_value_t = 48)]
        cases: usize,
        /// Extra values to merge: one per line, `0x…` lines are hex, lines
        /// starting with `#` and empty lines are skipped.
        #[arg(long)]
        corpus: Option<PathBuf>,
    },
}

/// Run a resolver subcommand; returns the process exit status.
pub fn run(command: ResolverCommand) -> anyhow::Result<u8> {
    match command {
        ResolverCommand::Check {
            file,
            seed,
            cases,
            corpus,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let corpus = match corpus {
                Some(path) => parse_corpus(
                    &std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                )?,
                None => Vec::new(),
            };
            let host = Host::new(ResolverLimits::default())?;
            let resolver = host
                .load(&bytes)
                .with_context(|| format!("loading {}", file.display()))?;
            let seed = seed.unwrap_or_else(rand::random);
            println!(
                "checking {} ({} bytes, blake3 {})",
                file.display(),
                bytes.len(),
                hex(&resolver.hash())
            );
            let report = check(
                &host,
                &resolver,
                &CheckOptions {
                    seed: Some(seed),
                    cases_per_size: cases,
                    corpus,
                    ..CheckOptions::default()
                },
            )?;
            print!("{report}");
            if report.passed() {
                println!("PASS: the merge is a join on every case tried");
                Ok(0)
            } else {
                println!("FAIL: reproduce with --seed {}", report.seed);
                Ok(1)
            }
        }
    }
}

/// Parse a corpus file (see `--corpus`).
fn parse_corpus(text: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut values = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(hexed) = line.strip_prefix("0x") {
            anyhow::ensure!(
                hexed.len() % 2 == 0,
                "corpus line {}: odd number of hex digits",
                n + 1
            );
            let bytes = (0..hexed.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hexed[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .with_context(|| format!("corpus line {}: bad hex", n + 1))?;
            values.push(bytes);
        } else {
            values.push(line.as_bytes().to_vec());
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_lines_are_text_or_hex() {
        let c = parse_corpus("# carts\n{\"a\":1}\n\n0x00ff\n").unwrap();
        assert_eq!(c, vec![b"{\"a\":1}".to_vec(), vec![0x00, 0xff]]);
        assert!(parse_corpus("0x0").is_err());
        assert!(parse_corpus("0xzz").is_err());
    }

    fn example(package: &str) -> PathBuf {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| {
                if t.is_absolute() {
                    t
                } else {
                    workspace.join(t)
                }
            })
            .unwrap_or_else(|| workspace.join("target"));
        let path = target
            .join("wasm32-unknown-unknown/release")
            .join(format!("{}.wasm", package.replace('-', "_")));
        assert!(
            path.exists(),
            "{} is missing; build it first: cargo build --release --target wasm32-unknown-unknown -p {package}",
            path.display()
        );
        path
    }

    fn check_status(package: &str) -> u8 {
        run(ResolverCommand::Check {
            file: example(package),
            seed: Some(3),
            cases: 8,
            corpus: None,
        })
        .unwrap()
    }

    #[test]
    fn check_exits_0_for_a_join_and_1_for_the_wrong_resolver() {
        assert_eq!(check_status("isthmus-example-lww"), 0);
        assert_eq!(check_status("isthmus-example-wrong-first-wins"), 1);
    }

    #[test]
    fn check_fails_cleanly_on_a_missing_or_invalid_file() {
        let missing = run(ResolverCommand::Check {
            file: "/nonexistent.wasm".into(),
            seed: None,
            cases: 1,
            corpus: None,
        });
        assert!(missing.is_err());
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.wasm");
        std::fs::write(&bad, b"not wasm").unwrap();
        let err = run(ResolverCommand::Check {
            file: bad,
            seed: None,
            cases: 1,
            corpus: None,
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("invalid module"), "{err:#}");
    }
}
