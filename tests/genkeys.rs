//! `dhid --genkeys` prints keys in the layouts dhid.conf and dhis.db read,
//! and the real dhisd accepts them.

mod common;

use std::time::Duration;

use common::dhid::Dhid;
use common::dhisd::{DbHost, Dhisd};

/// The digits of every `keyword` line, joined.
fn joined(text: &str, keyword: &str) -> String {
    text.lines()
        .filter_map(|l| l.strip_prefix(keyword)?.strip_prefix(' '))
        .collect()
}

#[test]
fn generated_keys_log_in_at_the_real_dhisd() {
    require_dhisd!();
    let out = Dhid::run(&["--genkeys"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let (p, q, n) = (
        joined(&text, "AuthP"),
        joined(&text, "AuthQ"),
        joined(&text, "AuthN"),
    );
    assert_eq!((p.len(), q.len(), n.len()), (100, 100, 200), "{text}");
    assert!(
        text.lines()
            .filter(|l| l.starts_with("Auth"))
            .all(|l| l.len() == 56),
        "{text}"
    );
    assert!(p.ends_with(['3', '7', '1', '9']) && p != q);

    // The key lines go into a record as printed.
    let dhisd = Dhisd::start(&[DbHost::qrc(6000, &n)]);
    let keys: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("AuthP") || l.starts_with("AuthQ"))
        .collect();
    let conf = format!(
        "{{\nHostID 6000\n{}\nISAddr 127.0.0.1:{}\n}}\n",
        keys.join("\n"),
        dhisd.port()
    );
    let dhid = Dhid::start(&conf, &[]);
    assert!(
        dhisd.wait_online(6000, Duration::from_secs(10)),
        "{}\n{:?}",
        dhisd.log(),
        dhid.lines()
    );

    // Two runs never print the same key.
    let again = String::from_utf8(Dhid::run(&["--genkeys"]).stdout).unwrap();
    assert_ne!(joined(&again, "AuthP"), p);
}
