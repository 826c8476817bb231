//! Redis glob patterns, as `SCAN ... MATCH` and `KEYS` take them: `*` (any
//! bytes), `?` (one byte), `[abc]`, `[^abc]`, `[a-z]` (a class; a range's
//! ends may come in either order) and `\x` (`x` itself), over bytes.
//!
//! Matching backtracks only to the last `*`, so it takes at most
//! pattern length times subject length steps, whatever the pattern (no
//! pattern of many stars can make it exponential).

/// Whether `subject` matches the glob `pattern`.
pub fn matches(pattern: &[u8], subject: &[u8]) -> bool {
    let (mut p, mut s) = (0usize, 0usize);
    // The pattern position after the last `*` and the subject position it
    // was last tried at.
    let mut star: Option<(usize, usize)> = None;
    while s < subject.len() {
        if let Some(&c) = pattern.get(p) {
            let step = match c {
                b'*' => {
                    star = Some((p + 1, s));
                    p += 1;
                    continue;
                }
                b'?' => Some(p + 1),
                b'[' => class(pattern, p, subject[s]),
                b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == subject[s]).then_some(p + 2),
                c => (c == subject[s]).then_some(p + 1),
            };
            if let Some(next) = step {
                p = next;
                s += 1;
                continue;
            }
        }
        match star {
            Some((after, tried)) => {
                p = after;
                s = tried + 1;
                star = Some((after, tried + 1));
            }
            None => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// The class opening at `pattern[open]` (a `[`) against `byte`: the
/// position after the class when it matches. A class without its `]`
/// runs to the end of the pattern.
fn class(pattern: &[u8], open: usize, byte: u8) -> Option<usize> {
    let mut i = open + 1;
    let negated = pattern.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut found = false;
    loop {
        match pattern.get(i) {
            None => break,
            Some(b']') => {
                i += 1;
                break;
            }
            Some(b'\\') if i + 1 < pattern.len() => {
                found |= pattern[i + 1] == byte;
                i += 2;
            }
            Some(&lo) if pattern.get(i + 1) == Some(&b'-') && i + 2 < pattern.len() => {
                let hi = pattern[i + 2];
                let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                found |= (lo..=hi).contains(&byte);
                i += 3;
            }
            Some(&c) => {
                found |= c == byte;
                i += 1;
            }
        }
    }
    (found != negated).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs_match_as_redis_does() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("user:*", "user:42", true),
            ("user:*", "users:42", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hbllo", true),
            ("h[a-b]llo", "hcllo", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*a*b*c*", "xxaxxbxxcxx", true),
            ("*a*b*c*", "xxaxxcxxbxx", false),
            ("k[", "k", false),
            ("k[x", "kx", true),
            ("", "", true),
            ("", "a", false),
            ("abc", "ab", false),
            ("ab\\", "ab\\", true),
        ];
        for &(pattern, subject, expected) in cases {
            assert_eq!(
                matches(pattern.as_bytes(), subject.as_bytes()),
                expected,
                "{pattern:?} against {subject:?}"
            );
        }
    }

    #[test]
    fn many_stars_stay_cheap() {
        let pattern = "*a".repeat(50) + "b";
        let subject = "a".repeat(5000);
        // Quadratic at worst: finishes at once instead of never.
        assert!(!matches(pattern.as_bytes(), subject.as_bytes()));
    }
}
