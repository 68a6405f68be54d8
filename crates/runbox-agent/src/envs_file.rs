//! `$EXECD_ENVS`: the official SDK's `commands.set_env` appends `KEY='value'` lines to the file
//! this variable names and expects later commands to see them. The agent reads it at each
//! spawn (it is small and written by the sandbox's own user).

use std::path::Path;

/// Lines beyond this size are ignored (the file is the sandbox's, so bound our work).
const MAX_BYTES: u64 = 1 << 20;

/// The variables in the file, later lines winning. Values may be bare, 'single-quoted' (with
/// `'\''` for a quote, as shell quoting writes it) or "double-quoted".
pub fn load(path: &Path) -> Vec<(String, String)> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    if !meta.is_file() || meta.len() > MAX_BYTES {
        return Vec::new();
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut vars: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches("export ").trim();
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        if key.is_empty()
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || key.as_bytes()[0].is_ascii_digit()
        {
            continue;
        }
        let value = unquote(raw);
        vars.retain(|(k, _)| k != key);
        vars.push((key.to_owned(), value));
    }
    vars
}

fn unquote(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    out.push(q);
                }
            }
            '"' => {
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                out.push(n);
                            }
                        }
                        _ => out.push(q),
                    }
                }
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoted_values_are_read() {
        assert_eq!(unquote("'a b'"), "a b");
        assert_eq!(unquote(r"'it'\''s'"), "it's");
        assert_eq!(unquote(r#""x\"y""#), "x\"y");
        assert_eq!(unquote("plain"), "plain");
        let dir = std::env::temp_dir().join(format!("runbox-envs-{}", std::process::id()));
        std::fs::write(&dir, "A='1'\nexport B=two\n1BAD=x\nA='3 4'\nnot a line\n").expect("write");
        assert_eq!(
            load(&dir),
            vec![
                ("B".to_owned(), "two".to_owned()),
                ("A".to_owned(), "3 4".to_owned())
            ]
        );
        let _ = std::fs::remove_file(dir);
    }
}
