//! The dhid command: options, start-up, detaching, and exit status.

#![no_main]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use log::{error, info, warn};

use dhid::cli::{self, Options};
use dhid::config::{self, Auth};
use dhid::daemon::{self, Daemon};
use dhid::pidfile::PidFile;
use dhid::{logging, qrc};

const SUCCESS: u8 = 0;
const FAILURE: u8 = 1;
/// Exit status for a bad command line, as getopt-style tools use.
const USAGE: u8 = 2;

/// The C entry point, in place of std's. Before `main` std places a guard
/// for its stack-overflow message, reading and parsing /proc/self/maps:
/// here about 45 µs of the 1.25 ms from spawn to the first ECHO_REQ, and
/// 65 µs of the 0.65 ms a `dhid -V` takes. An overflow (dhid does not
/// recurse) is now a plain SIGSEGV, and a panic names the thread
/// `<unnamed>`. What else std did that a daemon needs is in
/// `runtime_init`. The arguments still reach `std::env`: glibc hands them
/// to std's own initialiser as well as to this function.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    runtime_init();
    let status = dhid_main();
    // std flushed stdout on the way out of its `main`; glibc's exit does not.
    let _ = std::io::stdout().flush();
    status.into()
}

/// What std's start-up did that dhid relies on.
fn runtime_init() {
    // A closed 0, 1 or 2 would be taken by the UDP socket or the pid file,
    // and log lines meant for stderr would go there: open /dev/null on it.
    // In this order, open returns the descriptor just found closed.
    for fd in 0..=2 {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        #[allow(unsafe_code)]
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags == -1 && nix::errno::Errno::last() == nix::errno::Errno::EBADF {
            let null = nix::fcntl::open(
                "/dev/null",
                nix::fcntl::OFlag::O_RDWR,
                nix::sys::stat::Mode::empty(),
            );
            match null {
                // Left open for the life of the process, as its stdio.
                Ok(null) => std::mem::forget(null),
                Err(_) => std::process::abort(),
            }
        }
    }

    // A write to a closed pipe (the detaching parent's, a log reader's) is
    // an error to handle, not death. std's Command sets it back to default
    // in the hooks.
    // SAFETY: installing SIG_IGN runs no code of ours in a signal context.
    #[allow(unsafe_code)]
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
}

fn dhid_main() -> u8 {
    let cli = match cli::parse(std::env::args_os().skip(1)) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("dhid: {e}");
            eprintln!("{}", cli::USAGE);
            return USAGE;
        }
    };

    if cli.help {
        print!("{}", cli::help());
        return SUCCESS;
    }
    if cli.version {
        println!("dhid {}", env!("CARGO_PKG_VERSION"));
        return SUCCESS;
    }
    if cli.genkeys {
        return genkeys();
    }
    if cli.check {
        return check(&cli.config);
    }
    match start(&cli) {
        Ok(()) => SUCCESS,
        Err(()) => FAILURE,
    }
}

fn check(path: &Path) -> u8 {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("dhid: {e}");
            }
            return FAILURE;
        }
    };
    for w in &config.warnings {
        eprintln!("dhid: warning: {}", w.in_file(path));
    }
    for r in &config.records {
        for (keyword, hook) in [("OnCmd", &r.on_cmd), ("OffCmd", &r.off_cmd)] {
            let Some(hook) = hook else { continue };
            if dhid::hooks::find_program(&hook.program).is_none() {
                let file = path.display();
                eprintln!(
                    "dhid: warning: {file}:{}: {keyword} program {} not found",
                    hook.line, hook.program
                );
            }
        }
        let servers: Vec<String> = r.servers.iter().map(|s| s.to_string()).collect();
        let auth = match &r.auth {
            Auth::Password(p) => match p.chars().count() {
                1 => "password of 1 character".to_string(),
                n => format!("password of {n} characters"),
            },
            Auth::Qrc(key) => {
                if let Err(e) = key.full_check() {
                    eprintln!("dhid: {}:{}: {e}", path.display(), r.line);
                    return FAILURE;
                }
                "QRC".to_string()
            }
        };
        println!("HostID {}: {auth}, servers {}", r.hostid, servers.join(" "));
    }
    println!("configuration OK");
    SUCCESS
}

fn genkeys() -> u8 {
    let mut urandom = match std::fs::File::open("/dev/urandom") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("dhid: cannot open /dev/urandom: {e}");
            return FAILURE;
        }
    };
    let mut fill = |buf: &mut [u8]| urandom.read_exact(buf).expect("/dev/urandom reads");
    let p = qrc::random_prime_3mod4(100, &mut fill);
    let q = loop {
        let q = qrc::random_prime_3mod4(100, &mut fill);
        if q != p {
            break q;
        }
    };
    let n = &p * &q;
    println!("; dhid.conf, inside the host's record (keep these secret)");
    for line in qrc::split_lines("AuthP", &p, 50, 0)
        .iter()
        .chain(&qrc::split_lines("AuthQ", &q, 50, 0))
    {
        println!("{line}");
    }
    println!("; dhis.db, the server's record for the host");
    for line in qrc::split_lines("AuthN", &n, 50, 200) {
        println!("{line}");
    }
    SUCCESS
}

/// A fatal start-up error: to the log, and to stderr too when the log is
/// syslog, so that whoever started dhid sees it.
fn fatal(cli: &Options, msg: &str) {
    if !cli.foreground {
        eprintln!("dhid: {msg}");
    }
    error!("{msg}");
}

/// `path` made absolute: the daemon works in `/` once detached, and
/// rereads the configuration there on SIGHUP.
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    std::env::current_dir()
        .map(|d| d.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Descriptors inherited from whoever started dhid (a shell's redirection,
/// a caller's pipe) must not reach the hooks, and a detached daemon must
/// not hold them open: a caller waiting for end of file would hang.
fn shed_inherited_fds(detaching: bool) {
    let flags = if detaching {
        0
    } else {
        libc::CLOSE_RANGE_CLOEXEC as libc::c_int
    };
    // SAFETY: nothing of ours is open above stderr yet, so closing (or
    // marking) every higher descriptor touches only inherited ones.
    #[allow(unsafe_code)]
    unsafe {
        libc::close_range(3, libc::c_uint::MAX, flags);
    }
}

fn start(cli: &Options) -> Result<(), ()> {
    shed_inherited_fds(!cli.foreground);
    let cli = &Options {
        config: absolute(&cli.config),
        pidfile: absolute(&cli.pidfile),
        ..cli.clone()
    };
    let level = logging::level_for(cli.verbose);
    if cli.foreground {
        logging::init_stderr(level);
    } else {
        if !logging::syslog_available() {
            eprintln!("dhid: no syslog socket (/dev/log); running without a log");
        }
        logging::init_syslog(level);
    }

    // Everything that can fail for a reason the administrator must fix
    // happens before detaching, so the exit status tells.
    let mut config = config::load_deferring_key_checks(&cli.config).map_err(|errors| {
        for e in &errors {
            fatal(cli, &e.to_string());
        }
    })?;
    let socket = daemon::bind(cli.port).map_err(|e| {
        let port = cli.port;
        fatal(
            cli,
            &format!("failed to open incoming udp socket on port {port}: {e}"),
        );
    })?;

    let ready = if cli.foreground {
        None
    } else {
        // Shown once where the administrator started dhid, then logged.
        for w in &config.warnings {
            eprintln!("dhid: warning: {}", w.in_file(&cli.config));
        }
        let ready = detach()?;
        logging::reopen_syslog();
        Some(ready)
    };
    info!("daemon started");
    for w in &config.warnings {
        warn!("{}", w.in_file(&cli.config));
    }

    // The daemon first: its signal handlers are in place before the pid
    // file names it, so a TERM sent at once is an orderly one.
    let records = std::mem::take(&mut config.records);
    let mut daemon = match Daemon::new(socket, records, cli.config.clone(), cli.port) {
        Ok(d) => d,
        Err(e) => {
            let msg = format!("cannot start: {e}");
            error!("{msg}");
            report(ready, Err(msg));
            return Err(());
        }
    };

    // The first ECHO_REQs leave now; the keys' primality test and the pid
    // file are done while the answers travel. A key that fails it stops
    // dhid before any login, as a load error would. So does a pid file
    // locked by another dhid, which has then seen an ECHO_REQ or two from
    // this one go out: harmless, a server changes nothing for them.
    daemon.begin();
    if let Err(errors) = config.check_keys(&cli.config.display().to_string()) {
        for e in &errors {
            error!("{e}");
        }
        let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        report(ready, Err(all.join("\n")));
        return Err(());
    }
    let pidfile = match PidFile::create(&cli.pidfile) {
        Ok((pidfile, stale)) => {
            if let Some(previous) = stale {
                info!(
                    "replaced stale pid file {} ({previous})",
                    cli.pidfile.display()
                );
            }
            pidfile
        }
        Err(msg) => {
            error!("{msg}");
            report(ready, Err(msg));
            return Err(());
        }
    };
    report(ready, Ok(()));
    dhid::notify::ready();

    let result = daemon.run();
    pidfile.remove();
    log::logger().flush();
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            error!("poll loop failed: {e}");
            Err(())
        }
    }
}

/// Tell the waiting parent how start-up went, then leave the terminal.
fn report(ready: Option<OwnedFd>, result: Result<(), String>) {
    let Some(fd) = ready else { return };
    let mut pipe = std::fs::File::from(fd);
    let _ = match &result {
        Ok(()) => pipe.write_all(b"ok\n"),
        Err(msg) => pipe.write_all(format!("{msg}\n").as_bytes()),
    };
    drop(pipe);
    if result.is_ok() {
        let _ = redirect_stdio();
    }
}

fn redirect_stdio() -> nix::Result<()> {
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)
}

/// Fork; the parent waits until the child reports start-up and exits with
/// its status, so `dhid && echo started` means it. The child becomes a
/// session leader in `/`.
fn detach() -> Result<OwnedFd, ()> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| eprintln!("dhid: pipe: {e}"))?;
    // SAFETY: no other thread exists yet (the resolver and signal handlers
    // are set up after this), so the child may run arbitrary code.
    #[allow(unsafe_code)]
    let fork = unsafe { nix::unistd::fork() };
    match fork {
        Err(e) => {
            eprintln!("dhid: fork: {e}");
            Err(())
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(write);
            let mut text = String::new();
            let _ = std::fs::File::from(read).read_to_string(&mut text);
            if text == "ok\n" {
                std::process::exit(0);
            }
            if text.is_empty() {
                eprintln!("dhid: the daemon died during start-up");
            }
            for line in text.lines() {
                eprintln!("dhid: {line}");
            }
            std::process::exit(1);
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(read);
            let _ = nix::unistd::setsid();
            let _ = std::env::set_current_dir("/");
            Ok(write)
        }
    }
}
