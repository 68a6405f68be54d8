//! Image names: `[a-z0-9][a-z0-9._-]{0,63}`. A name is a directory under the images dir and
//! the repository part of `runbox/<name>:latest`, so it must be safe as both: no `/`, no
//! leading dot (tmp dirs start with one), nothing Docker would refuse in a repository name
//! except `.` and `_` runs, which Docker accepts as separators.

use thiserror::Error;

pub const MAX_NAME_LEN: usize = 64;

/// `<dir>/<name>.build.log` shares the images directory with the images themselves.
pub(crate) const BUILD_LOG_SUFFIX: &str = ".build.log";

#[derive(Debug, Error)]
pub enum NameError {
    #[error(
        "invalid image name `{name}`: use 1 to 64 characters from a-z, 0-9, `.`, `_`, `-`, \
         starting with a letter or digit"
    )]
    Invalid { name: String },
    #[error("cannot derive an image name from `{reference}`; pass --name")]
    Underivable { reference: String },
    #[error("the archive names no image (no repo tag); pass --name")]
    NoReference,
    #[error(
        "invalid image name `{name}`: names ending in `.build.log` are reserved for build logs"
    )]
    Reserved { name: String },
}

pub fn validate_name(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok && name.ends_with(BUILD_LOG_SUFFIX) {
        Err(NameError::Reserved {
            name: name.to_owned(),
        })
    } else if ok {
        Ok(())
    } else {
        Err(NameError::Invalid {
            name: name.to_owned(),
        })
    }
}

/// The image name for a reference such as `docker.io/library/python:3.12-slim@sha256:...`:
/// the last path segment of the repository, plus `-<tag>` unless the tag is `latest`
/// (`python-3.12-slim`, `alpine`), lowercased, other characters replaced by `-`.
pub fn name_from_reference(reference: &str) -> Result<String, NameError> {
    let underivable = || NameError::Underivable {
        reference: reference.to_owned(),
    };
    let without_digest = reference.split('@').next().unwrap_or_default();
    let last = without_digest.rsplit('/').next().unwrap_or_default();
    let (repo, tag) = match last.split_once(':') {
        Some((repo, tag)) => (repo, Some(tag)),
        None => (last, None),
    };
    let raw = match tag {
        Some(tag) if tag != "latest" && !tag.is_empty() => format!("{repo}-{tag}"),
        _ => repo.to_owned(),
    };
    let mut name: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(MAX_NAME_LEN);
    validate_name(&name).map_err(|_| underivable())?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_pattern() {
        for good in ["default", "a", "0", "py3.12_slim-x", &"a".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "_x",
            "Upper",
            "a/b",
            "..",
            "a b",
            "é",
            "x.build.log",
            &"a".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_come_from_references() {
        let cases = [
            ("alpine", "alpine"),
            ("alpine:latest", "alpine"),
            ("alpine:3.19", "alpine-3.19"),
            ("docker.io/library/python:3.12-slim", "python-3.12-slim"),
            ("localhost:5000/team/Tool:V1", "tool-v1"),
            ("ghcr.io/x/y@sha256:abcd", "y"),
        ];
        for (reference, name) in cases {
            assert_eq!(name_from_reference(reference).ok().as_deref(), Some(name));
        }
        assert!(name_from_reference(":").is_err());
        assert!(name_from_reference("_x").is_err());
    }
}
