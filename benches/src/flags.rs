//! A bench's command line, read flag by flag: `--help` prints the usage and exits; a
//! flag without its value, a value that does not parse and an unknown flag say so with
//! the usage and exit 2 (no panic).

use std::str::FromStr;

/// The flags after the program's name.
#[derive(Debug)]
pub struct Flags {
    args: std::iter::Skip<std::env::Args>,
    usage: &'static str,
}

impl Flags {
    /// This process's flags; `usage` is what `--help` prints.
    pub fn new(usage: &'static str) -> Self {
        Self {
            args: std::env::args().skip(1),
            usage,
        }
    }

    /// The next flag; `--help` prints the usage and exits 0.
    pub fn next_flag(&mut self) -> Option<String> {
        let flag = self.args.next()?;
        if flag == "--help" || flag == "-h" {
            println!("{}", self.usage);
            std::process::exit(0);
        }
        Some(flag)
    }

    /// The value after `flag`.
    pub fn value(&mut self, flag: &str) -> String {
        match self.args.next() {
            Some(value) => value,
            None => self.fail(&format!("{flag} needs a value")),
        }
    }

    /// The value after `flag`, parsed.
    pub fn parse<T: FromStr>(&mut self, flag: &str) -> T {
        let value = self.value(flag);
        value
            .parse()
            .unwrap_or_else(|_| self.fail(&format!("{flag} {value}: not a valid value")))
    }

    /// Says what is wrong, with the usage, and exits 2.
    pub fn fail(&self, problem: &str) -> ! {
        eprintln!("{problem}\n{}", self.usage);
        std::process::exit(2);
    }

    /// An unknown flag.
    pub fn unknown(&self, flag: &str) -> ! {
        self.fail(&format!("unknown flag {flag}"))
    }
}
