//! The manual pages against the binary: dhid(8) documents exactly the
//! flags `dhid --help` lists, dhid.conf(5) every keyword the sample file
//! uses, and both pages render without a warning from man and groff.
//!
//! The rendering check needs the Debian packages man-db and groff-base
//! (or groff). Without them it fails, unless DHID_SKIP_MAN=1 says to skip.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_dhid");

fn source(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = source(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The flags of a text such as "-F, --foreground" or "-v..." or
/// "-f <FILE>": every word that starts with a dash, without "..." or a
/// "=VALUE" part.
fn flags_in(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| w.len() > 1 && w.starts_with('-'))
        .map(|w| {
            let w = w.trim_end_matches("...");
            w.split(['=', '[']).next().unwrap_or(w).to_string()
        })
        .collect()
}

/// The flags in the "Options:" part of `dhid -h`. An option line is
/// indented a little; its flags end where two blanks start the
/// description. Lines indented further are wrapped descriptions.
fn help_flags(help: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    let mut in_options = false;
    for line in help.lines() {
        if line.ends_with(':') && !line.starts_with(' ') {
            in_options = line == "Options:";
            continue;
        }
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if !in_options || indent > 6 || !trimmed.starts_with('-') {
            continue;
        }
        let head = trimmed.split("  ").next().unwrap_or(trimmed);
        flags.extend(flags_in(head));
    }
    flags
}

/// The lines of one `.SH` section of a roff page.
fn section<'a>(page: &'a str, name: &str) -> Vec<&'a str> {
    let heading = format!(".SH {name}");
    page.lines()
        .skip_while(|l| l.trim_end() != heading && l.trim_end() != format!(".SH \"{name}\""))
        .skip(1)
        .take_while(|l| !l.starts_with(".SH"))
        .collect()
}

/// The tag lines of the `.TP` entries in `lines`, as plain text: the
/// line after each `.TP` (and after each `.TQ`), without its macro name,
/// font escapes and quotes.
fn tags(lines: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for pair in lines.windows(2) {
        if matches!(pair[0].trim_end(), ".TP" | ".TQ") {
            out.push(plain(pair[1]));
        }
    }
    out
}

fn plain(roff: &str) -> String {
    let mut text = roff.to_string();
    if text.starts_with('.') {
        text = text
            .split_once(' ')
            .map(|(_, rest)| rest)
            .unwrap_or("")
            .to_string();
    }
    for font in ["\\fB", "\\fI", "\\fR", "\\fP"] {
        text = text.replace(font, "");
    }
    text.replace("\\-", "-").replace('"', " ")
}

#[test]
fn dhid_8_documents_exactly_the_flags_of_help() {
    let out = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run dhid --help");
    assert!(out.status.success(), "dhid --help failed: {out:?}");
    let help = String::from_utf8(out.stdout).expect("help is UTF-8");
    let from_help = help_flags(&help);
    assert!(
        from_help.contains("-h"),
        "no flags found in dhid --help:\n{help}"
    );

    let page = read("man/dhid.8");
    let options = section(&page, "OPTIONS");
    assert!(!options.is_empty(), "man/dhid.8 has no OPTIONS section");
    let from_page: BTreeSet<String> = tags(&options).iter().flat_map(|t| flags_in(t)).collect();

    let missing: Vec<_> = from_help.difference(&from_page).collect();
    let extra: Vec<_> = from_page.difference(&from_help).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "OPTIONS of man/dhid.8 and dhid --help disagree\n\
         listed by --help, missing from the page: {missing:?}\n\
         on the page, unknown to --help: {extra:?}"
    );
}

#[test]
fn dhid_conf_5_documents_every_keyword_of_the_sample() {
    let page = read("man/dhid.conf.5");
    let documented: BTreeSet<String> = tags(&section(&page, "KEYWORDS"))
        .iter()
        .flat_map(|t| {
            // "HostID number" names one keyword, "hostname, mxaddr" two.
            t.split(',')
                .filter_map(|part| part.split_whitespace().next())
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
        })
        .collect();

    let sample = read("dhid.conf.sample");
    let used: BTreeSet<String> = sample
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with([';', '{', '}']))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_ascii_lowercase)
        .collect();
    assert!(
        used.contains("hostid"),
        "no keywords found in dhid.conf.sample"
    );

    let missing: Vec<_> = used.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keywords of dhid.conf.sample missing from KEYWORDS in man/dhid.conf.5: {missing:?}"
    );
}

/// Whether `program` is installed: false when it cannot be found.
fn installed(program: &str) -> bool {
    match Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

#[test]
fn pages_render_without_warnings() {
    let missing: Vec<_> = ["man", "groff"]
        .into_iter()
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        if std::env::var("DHID_SKIP_MAN").as_deref() == Ok("1") {
            eprintln!("skipped: {missing:?} not installed and DHID_SKIP_MAN=1");
            return;
        }
        panic!(
            "{missing:?} not installed: the manual pages cannot be checked. Install the Debian \
             packages man-db and groff-base (apt-get install man-db groff-base), or set \
             DHID_SKIP_MAN=1 to skip this test"
        );
    }

    for page in ["man/dhid.8", "man/dhid.conf.5"] {
        // Once in the caller's locale, once in plain ASCII.
        for locale in [None, Some("C")] {
            let mut man = Command::new("man");
            man.arg("--warnings")
                .arg("-l")
                .arg(source(page))
                .env("MANWIDTH", "80")
                .env("MANPAGER", "cat")
                .env("PAGER", "cat")
                .stdin(Stdio::null());
            if let Some(locale) = locale {
                man.env("LC_ALL", locale);
            }
            let out = man.output().expect("run man");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "man -l {page} failed: {stderr}");
            assert!(
                stderr.trim().is_empty(),
                "man --warnings -l {page} (LC_ALL {locale:?}) warns:\n{stderr}"
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("NAME"),
                "man -l {page} printed no page"
            );
        }
    }
}
