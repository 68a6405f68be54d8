//! Glob patterns for /files/search, with the doublestar syntax the spec's reference uses:
//! `*` and `?` stay within one path component, `**` crosses them (`a/**/b` also matches
//! `a/b`), `[a-z]`/`[!a-z]` classes, `{x,y}` alternatives and `\` escapes.

use crate::error::ApiError;

/// Alternatives one pattern may expand to through `{..}`.
const MAX_ALTERNATIVES: usize = 256;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    AnyChar,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Star,
    DoubleStar,
    /// `**/`: zero or more whole components.
    DoubleStarSlash,
}

/// A compiled pattern (all its brace alternatives).
#[derive(Debug, Clone)]
pub(super) struct Glob {
    alternatives: Vec<Vec<Token>>,
    /// Whether the pattern names directories (`src/*.rs`) and so matches relative paths
    /// rather than file names.
    has_slash: bool,
}

impl Glob {
    pub(super) fn new(pattern: &str) -> Result<Self, ApiError> {
        let invalid =
            |why: &str| ApiError::bad_request(format!("invalid pattern {pattern:?}: {why}"));
        let mut expanded = Vec::new();
        expand_braces(pattern, &mut expanded).map_err(invalid)?;
        let alternatives = expanded
            .iter()
            .map(|p| tokenize(p).map_err(invalid))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            alternatives,
            has_slash: pattern.contains('/'),
        })
    }

    /// Matches `relative` (a path under the search root, `/`-separated) or, for a pattern
    /// without `/`, just its last component.
    pub(super) fn matches(&self, relative: &str) -> bool {
        let subject = if self.has_slash {
            relative
        } else {
            relative.rsplit('/').next().unwrap_or(relative)
        };
        let text: Vec<char> = subject.chars().collect();
        self.alternatives
            .iter()
            .any(|tokens| match_tokens(tokens, &text))
    }
}

fn expand_braces(pattern: &str, out: &mut Vec<String>) -> Result<(), &'static str> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut open = None;
    let mut depth = 0;
    let mut commas = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '{' => {
                if depth == 0 {
                    open = Some(i);
                    commas.clear();
                }
                depth += 1;
            }
            ',' if depth == 1 => commas.push(i),
            '}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    let start = open.unwrap_or(0);
                    let prefix: String = chars[..start].iter().collect();
                    let suffix: String = chars[i + 1..].iter().collect();
                    let mut bounds = vec![start];
                    bounds.extend(&commas);
                    bounds.push(i);
                    for w in bounds.windows(2) {
                        let middle: String = chars[w[0] + 1..w[1]].iter().collect();
                        expand_braces(&format!("{prefix}{middle}{suffix}"), out)?;
                        if out.len() > MAX_ALTERNATIVES {
                            return Err("too many {..} alternatives");
                        }
                    }
                    return Ok(());
                }
            }
            _ => {}
        }
        i += 1;
    }
    if depth > 0 {
        return Err("unbalanced '{'");
    }
    out.push(pattern.to_owned());
    Ok(())
}

fn tokenize(pattern: &str) -> Result<Vec<Token>, &'static str> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                i += 1;
                tokens.push(Token::Literal(*chars.get(i).ok_or("trailing '\\'")?));
            }
            '?' => tokens.push(Token::AnyChar),
            '*' => {
                let start = i;
                while chars.get(i + 1) == Some(&'*') {
                    i += 1;
                }
                let whole_component = start == 0 || chars[start - 1] == '/';
                if i == start {
                    tokens.push(Token::Star);
                } else if whole_component && chars.get(i + 1) == Some(&'/') {
                    tokens.push(Token::DoubleStarSlash);
                    i += 1;
                } else {
                    tokens.push(Token::DoubleStar);
                }
            }
            '[' => {
                let (token, end) = class(&chars, i)?;
                tokens.push(token);
                i = end;
            }
            c => tokens.push(Token::Literal(c)),
        }
        i += 1;
    }
    Ok(tokens)
}

/// Parses the class starting at `chars[open] == '['`; returns it and the index of its `]`.
fn class(chars: &[char], open: usize) -> Result<(Token, usize), &'static str> {
    let mut i = open + 1;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut c = *chars.get(i).ok_or("unterminated '['")?;
        if c == ']' && !first {
            return Ok((Token::Class { negated, ranges }, i));
        }
        first = false;
        if c == '\\' {
            i += 1;
            c = *chars.get(i).ok_or("unterminated '['")?;
        }
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|&e| e != ']') {
            let hi = chars[i + 2];
            if hi < c {
                return Err("reversed range in '[..]'");
            }
            ranges.push((c, hi));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
}

/// Dynamic programming over (token, char): `next[j]` says whether tokens after the current
/// one match `text[j..]`. Linear in pattern times text, whatever the stars.
fn match_tokens(tokens: &[Token], text: &[char]) -> bool {
    let n = text.len();
    let mut next: Vec<bool> = (0..=n).map(|j| j == n).collect();
    for token in tokens.iter().rev() {
        let mut cur = vec![false; n + 1];
        let mut tail_after_slash = false;
        for j in (0..=n).rev() {
            let c = text.get(j).copied();
            let one = |ok: fn(char) -> bool| c.is_some_and(ok) && next[j + 1];
            cur[j] = match token {
                Token::Literal(l) => c == Some(*l) && next[j + 1],
                Token::AnyChar => one(|c| c != '/'),
                Token::Class { negated, ranges } => {
                    c.is_some_and(|c| {
                        c != '/'
                            && ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
                    }) && next[j + 1]
                }
                Token::Star => next[j] || (c.is_some_and(|c| c != '/') && cur[j + 1]),
                Token::DoubleStar => next[j] || (c.is_some() && cur[j + 1]),
                Token::DoubleStarSlash => {
                    tail_after_slash = tail_after_slash || (c == Some('/') && next[j + 1]);
                    next[j] || tail_after_slash
                }
            };
        }
        next = cur;
    }
    next[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        Glob::new(pattern).expect("valid pattern").matches(path)
    }

    #[test]
    fn names_match_without_slash() {
        assert!(m("*.txt", "a/b/notes.txt"));
        assert!(!m("*.txt", "a/notes.txt.bak"));
        assert!(m("**", "a/b/c"));
        assert!(m("n?tes.*", "x/notes.md"));
        assert!(m("[a-c]*", "b.rs"));
        assert!(!m("[!a-c]*", "b.rs"));
        assert!(m("*.{rs,toml}", "src/Cargo.toml"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
    }

    #[test]
    fn paths_match_with_slash() {
        assert!(m("src/**/*.rs", "src/a/b/c.rs"));
        assert!(m("src/**/*.rs", "src/c.rs"));
        assert!(!m("src/*.rs", "src/a/c.rs"));
        assert!(m("**/c.rs", "c.rs"));
        assert!(m("a/**", "a/b/c"));
        assert!(!m("a/*", "a/b/c"));
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert!(Glob::new("[abc").is_err());
        assert!(Glob::new("{a,b").is_err());
        assert!(Glob::new("x\\").is_err());
    }

    #[test]
    fn many_stars_stay_fast() {
        let text = "a".repeat(200);
        assert!(!m("*a*a*a*a*a*a*a*a*a*a*b", &text));
    }
}
