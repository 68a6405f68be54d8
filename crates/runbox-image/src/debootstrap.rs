//! Reading debootstrap's progress from its standard output (the `I:`/`W:`/`E:` lines; the
//! full log goes to `<target>/debootstrap/debootstrap.log`). The package count comes from a
//! `--print-debs` run first, so the bar is real: 3 steps for each of N packages.
//!
//! ```text
//! I: Retrieving libc6 2.36-9+deb12u10      download, one per package
//! I: Validating libc6 2.36-9+deb12u10
//! I: Extracting libc6...                   required packages only, before dpkg exists
//! I: Unpacking libc6...                    unpack, one per package
//! I: Configuring libc6...                  configure, one per package that has a step
//! I: Base system installed successfully.
//! ```
//!
//! Lines that name a phase instead of a package ("Unpacking the base system...",
//! "Retrieving Packages") are told apart by their shape: a package line has exactly one
//! word (plus a version for Retrieving).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    Retrieving(&'a str),
    Validating(&'a str),
    Extracting(&'a str),
    Unpacking(&'a str),
    Configuring(&'a str),
    /// Any other `I:` line.
    Info(&'a str),
    Warning(&'a str),
    Error(&'a str),
    Done,
    Other,
}

/// `libc6...` -> `libc6`; `the base system...` -> None.
fn package_dots(rest: &str) -> Option<&str> {
    let word = rest.trim().strip_suffix("...")?;
    (!word.is_empty() && !word.contains(' ')).then_some(word)
}

/// `libc6 2.36-9` -> `libc6`; `Packages` -> None.
fn package_version(rest: &str) -> Option<&str> {
    let mut words = rest.split_whitespace();
    let name = words.next()?;
    words.next()?;
    words.next().is_none().then_some(name)
}

pub(crate) fn parse(line: &str) -> Event<'_> {
    let line = line.trim_end();
    if let Some(text) = line.strip_prefix("W: ") {
        return Event::Warning(text);
    }
    if let Some(text) = line.strip_prefix("E: ") {
        return Event::Error(text);
    }
    let Some(text) = line.strip_prefix("I: ") else {
        return Event::Other;
    };
    if text.starts_with("Base system installed successfully") {
        return Event::Done;
    }
    let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
    let event = match verb {
        "Retrieving" => package_version(rest).map(Event::Retrieving),
        "Validating" => package_version(rest).map(Event::Validating),
        "Extracting" => package_dots(rest).map(Event::Extracting),
        "Unpacking" => package_dots(rest).map(Event::Unpacking),
        "Configuring" => package_dots(rest).map(Event::Configuring),
        _ => None,
    };
    event.unwrap_or(Event::Info(text))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    Download,
    Unpack,
    Configure,
}

impl Stage {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Stage::Download => "downloading",
            Stage::Unpack => "unpacking",
            Stage::Configure => "configuring",
        }
    }
}

/// The package step a line reports, if any. The bar counts every step of every package
/// (download + unpack + configure = 3N); debootstrap unpacks and configures the required set
/// and then the base set, so the current stage goes back and forth and only the total moves
/// steadily. `Extracting` (the required set, before dpkg exists) is not counted: those
/// packages are unpacked again with dpkg.
pub(crate) fn step<'a>(event: &Event<'a>) -> Option<(Stage, &'a str)> {
    match *event {
        Event::Retrieving(p) => Some((Stage::Download, p)),
        Event::Unpacking(p) => Some((Stage::Unpack, p)),
        Event::Configuring(p) => Some((Stage::Configure, p)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_classified() {
        assert_eq!(
            parse("I: Retrieving libc6 2.36-9+deb12u10"),
            Event::Retrieving("libc6")
        );
        assert_eq!(
            parse("I: Retrieving InRelease "),
            Event::Info("Retrieving InRelease")
        );
        assert_eq!(
            parse("I: Retrieving Packages "),
            Event::Info("Retrieving Packages")
        );
        assert_eq!(
            parse("I: Validating bash 5.2.15-2+b7"),
            Event::Validating("bash")
        );
        assert_eq!(parse("I: Extracting dpkg..."), Event::Extracting("dpkg"));
        assert_eq!(
            parse("I: Unpacking python3.11..."),
            Event::Unpacking("python3.11")
        );
        assert_eq!(
            parse("I: Unpacking the base system..."),
            Event::Info("Unpacking the base system...")
        );
        assert_eq!(
            parse("I: Configuring libc-bin..."),
            Event::Configuring("libc-bin")
        );
        assert_eq!(parse("I: Base system installed successfully."), Event::Done);
        assert_eq!(
            parse("W: Failure trying to run: chroot x"),
            Event::Warning("Failure trying to run: chroot x")
        );
        assert_eq!(
            parse("E: Couldn't find these debs: nope"),
            Event::Error("Couldn't find these debs: nope")
        );
        assert_eq!(parse("random"), Event::Other);
    }

    #[test]
    fn every_package_step_counts_once() {
        let log = "\
I: Retrieving InRelease 
I: Retrieving a 1
I: Validating a 1
I: Retrieving b 1
I: Validating b 1
I: Extracting a...
I: Installing core packages...
I: Unpacking required packages...
I: Unpacking a...
I: Configuring required packages...
I: Configuring a...
I: Unpacking the base system...
I: Unpacking b...
I: Configuring the base system...
I: Configuring b...
I: Base system installed successfully.";
        let mut counted = [0; 3];
        for line in log.lines() {
            if let Some((stage, _)) = step(&parse(line)) {
                counted[stage as usize] += 1;
            }
        }
        assert_eq!(counted, [2, 2, 2]);
    }
}
