//! Glob matchers for rule selectors: `*` matches any run of characters
//! (`/` and `:` included, so `group:*` selects every group tier), `?` one
//! character, everything else itself.

use std::fmt;

/// A compiled glob pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    chars: Vec<char>,
    /// Only stars: matches everything.
    any: bool,
    /// No `*` or `?`: matches itself only.
    literal: bool,
}

impl Glob {
    /// The pattern that matches everything.
    pub fn any() -> Glob {
        Glob::new("*")
    }

    /// Compiles `pattern`; every string is a valid pattern.
    pub fn new(pattern: &str) -> Glob {
        let chars: Vec<char> = pattern.chars().collect();
        Glob {
            pattern: pattern.to_owned(),
            any: !chars.is_empty() && chars.iter().all(|c| *c == '*'),
            literal: !chars.iter().any(|c| matches!(c, '*' | '?')),
            chars,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether this glob selects everything.
    pub fn is_any(&self) -> bool {
        self.any
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        if self.any {
            return true;
        }
        if self.literal {
            return self.pattern == text;
        }
        let text: Vec<char> = text.chars().collect();
        let (p, t) = (&self.chars, &text);
        let (mut pi, mut ti) = (0, 0);
        // Where the last `*` was, and where in the text it started matching:
        // on a mismatch the star swallows one more character and we retry.
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some('*') => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(c) if *c == '?' || *c == t[ti] => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|c| *c == '*')
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.pattern)
    }
}

impl Default for Glob {
    fn default() -> Self {
        Glob::any()
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn stars_and_question_marks() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("orders", "orders", true),
            ("orders", "orders2", false),
            ("ord*", "orders", true),
            ("*ers", "orders", true),
            ("o*r*s", "orders", true),
            ("o*x*s", "orders", false),
            ("group:*", "group:billing", true),
            ("group:*", "broker", false),
            ("b?lling", "billing", true),
            ("b?lling", "bling", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("", "", true),
            ("", "x", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(Glob::new(pattern).matches(text), want, "{pattern} ~ {text}");
        }
    }
}
