//! `kv put` values of any size up to the command limit, from the command line, stdin
//! (`put KEY -`) or a file (`--value-file`), replicated and read back; a value over the limit is
//! refused before anything is sent (exit 2). Durations must be positive (exit 2).

use iroh_raft::actors::wire::MAX_COMMAND_SIZE;

use crate::support::{Cluster, cli, cli_in};

#[test]
fn large_values_from_stdin_and_a_file_and_none_over_the_limit() {
    let c = Cluster::start(2);
    let (keys, admin) = (c.keys.path(), c.admin.as_str());
    let kv = |args: &[&str], stdin: &[u8]| {
        let mut all = vec!["kv", "--cluster", admin];
        all.extend_from_slice(args);
        cli_in(keys, &all, stdin)
    };
    let mib: String = (0..1 << 20)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();

    let out = kv(&["put", "from-stdin", "-"], mib.as_bytes());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("value");
    std::fs::write(&file, format!("{mib}!")).unwrap();
    let out = kv(
        &["put", "from-file", "--value-file", file.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = kv(&["get", "from-stdin"], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout == format!("{mib}\n"),
        "the 1 MiB value came back changed"
    );
    let out = kv(&["get", "from-file"], b"");
    assert!(
        out.stdout == format!("{mib}!\n"),
        "the 1 MiB file came back changed"
    );

    // Over the limit: read from stdin (more than the limit), or within it but too large once
    // encoded as a command. Both are refused before anything is sent.
    let huge = vec![b'x'; MAX_COMMAND_SIZE + 4096];
    let out = kv(&["put", "huge", "-"], &huge);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("nothing was sent"), "{}", out.stderr);
    std::fs::write(&file, &huge[..MAX_COMMAND_SIZE]).unwrap();
    let out = kv(
        &["put", "huge", "--value-file", file.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("nothing was sent"), "{}", out.stderr);
    let out = kv(&["get", "huge"], b"");
    assert_eq!(
        out.code,
        1,
        "the refused value was stored: {}",
        out.stdout.len()
    );
    assert!(out.stderr.contains("not found"), "{}", out.stderr);

    // A ticket valid for no time at all, and a timeout of none, are bad usage.
    let (code, _, err) = cli(
        keys,
        &[
            "ctl",
            "--cluster",
            admin,
            "ticket",
            "--role",
            "join",
            "--expires",
            "0s",
        ],
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(
        keys,
        &["kv", "--cluster", admin, "--timeout", "0s", "get", "a"],
    );
    assert_eq!(code, 2, "{err}");
}
