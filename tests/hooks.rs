//! OnCmd and OffCmd: the argv and environment they get, their file
//! descriptors, no fixed buffers, and no zombies left behind.

mod common;

use std::time::Duration;

use common::conf::conf_password;
use common::dhid::Dhid;
use common::tmp::TempDir;
use dhid::testserver::{Config, TestServer};
use nix::sys::signal::Signal;

const SHORT: Duration = Duration::from_secs(10);

/// Children of `pid` that are zombies (state Z in /proc).
fn zombies_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&pid.to_string().as_str()) {
            out.push(child);
        }
    }
    out
}

#[test]
fn hooks_get_argv_environment_and_dev_null() {
    let server = TestServer::start(Config::default().password(31, "pw")).unwrap();
    let dir = TempDir::new("hooks");
    // A 600-character path and 300 characters of arguments.
    let mut deep = dir.path().to_path_buf();
    while deep.display().to_string().len() < 590 {
        deep.push("d".repeat(60));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let out = dir.join("out.txt");
    let signals = dir.join("signals.txt");
    let script = format!(
        "#!/bin/sh\nfds=$(for fd in 0 1 2; do echo \"fd$fd=$(readlink /proc/$$/fd/$fd)\"; done)\n\
         while read -r l; do case $l in SigBlk:*|SigIgn:*) echo \"$l\";; esac; \
         done < /proc/$$/status >> {}\n\
         {{ echo \"argc=$#\"; echo \"args=$*\"; \
         echo \"env=$DHID_EVENT $DHID_HOSTID $DHID_ADDRESS $DHID_SERVER\"; \
         echo \"$fds\"; }} >> {}\n",
        signals.display(),
        out.display()
    );
    let hook = deep.join("hook.sh");
    std::fs::write(&hook, script).unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let hook_path = hook.display().to_string();
    assert!(hook_path.len() >= 600, "{}", hook_path.len());

    let words: Vec<String> = (0..60).map(|i| format!("w{i:03}")).collect();
    let args = words.join(" ");
    assert!(args.len() >= 290);
    let on = format!("OnCmd {hook_path} on {args}");
    let off = format!("OffCmd {hook_path} off 'quoted arg'");
    let conf = conf_password(31, "pw", server.local_port(), &[&on, &off]);
    let dhid = Dhid::start(&conf, &[]);
    assert!(dhid.wait_line("[31] -> Online", SHORT).is_some());
    let ready = || std::fs::read_to_string(&out).unwrap_or_default();
    assert!(common::wait_until(SHORT, Duration::from_millis(20), || {
        ready().contains("fd2=")
    }));
    dhid.signal(Signal::SIGUSR2);
    assert!(common::wait_until(SHORT, Duration::from_millis(20), || {
        ready().matches("fd2=").count() == 2
    }));

    let text = ready();
    let lines: Vec<&str> = text.lines().collect();
    // $1 hostid, $2 address, then the words of the line: 2 + 1 + 60.
    assert_eq!(lines[0], "argc=63", "{text}");
    assert_eq!(lines[1], format!("args=31 127.0.0.1 on {args}"), "{text}");
    let server_addr = format!("127.0.0.1:{}", server.local_port());
    assert_eq!(
        lines[2],
        format!("env=online 31 127.0.0.1 {server_addr}"),
        "{text}"
    );
    for line in &lines[3..6] {
        assert!(line.ends_with("=/dev/null"), "{text}");
    }
    // Shell quoting in the config keeps working.
    assert_eq!(lines[6], "argc=4", "{text}");
    assert_eq!(lines[7], "args=31 127.0.0.1 off quoted arg", "{text}");
    assert_eq!(
        lines[8],
        format!("env=offline 31 127.0.0.1 {server_addr}"),
        "{text}"
    );

    // dhid ignores SIGPIPE and blocks nothing, but a hook starts as any
    // program expects: SIGPIPE kills it, no signal is blocked. Read with
    // shell builtins only: dash blocks every signal while it forks a
    // command (grep would see the shell's mask of that moment).
    let signals = std::fs::read_to_string(&signals).unwrap();
    let masks: Vec<(&str, u64)> = signals
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, hex)| (name, u64::from_str_radix(hex.trim(), 16).unwrap()))
        .collect();
    assert_eq!(masks.len(), 4, "{signals}");
    for (name, mask) in masks {
        match name {
            "SigBlk" => assert_eq!(mask, 0, "{signals}"),
            _ => assert_eq!(mask & 1 << (libc::SIGPIPE - 1), 0, "{signals}"),
        }
    }

    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(zombies_of(dhid.pid()), Vec::<i32>::new());
}

#[test]
fn a_hook_found_only_in_lower_case_runs_lower_cased() {
    let server = TestServer::start(Config::default().password(32, "pw")).unwrap();
    let dir = TempDir::new("hooks-case");
    let out = dir.join("out.txt");
    let hook = dir.write_mode(
        "online.sh",
        &format!("#!/bin/sh\necho \"$*\" >> {}\n", out.display()),
        0o755,
    );
    // Written in capitals, as a config made for the C dhid (which
    // lower-cased every line) may have it.
    let written = hook.display().to_string().replace("online.sh", "OnLine.sh");
    let conf = conf_password(
        32,
        "pw",
        server.local_port(),
        &[&format!("OnCmd {written} x")],
    );
    let dhid = Dhid::start(&conf, &[]);
    let ran = common::wait_until(SHORT, Duration::from_millis(20), || out.exists());
    assert!(ran, "{:?}", dhid.lines());
    assert!(dhid.count("not found; running") == 1, "{:?}", dhid.lines());
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        "32 127.0.0.1 x"
    );
}
