//! An "internet" for the tests: a namespace joined to the relay's namespace by a veth pair,
//! holding that namespace's default route and an HTTP server with a 1 MiB blob and a CGI that
//! prints the client's address. Traffic stays inside namespaces the tests make.

// Each test binary (scenarios, v86) uses part of it.
#![allow(dead_code)]

use super::harness::*;

/// The "internet" server's address (a documentation range, inside our own namespace).
pub const SERVER: &str = "198.51.100.2";
/// Its HTTP port (the v86 test guest fetches from port 8000 of its `tw.host`).
pub const HTTP_PORT: u16 = 8000;

/// The relay namespace's address on its uplink (the veth to the "internet").
pub const UPLINK_ADDRESS: &str = "198.51.100.1";

/// A namespace joined to `relay_ns` by a veth pair, holding the relay namespace's default
/// route and an HTTP server with one file.
pub struct Internet {
    pub ns: Netns,
    _http: Proc,
    _dir: TempDir,
    /// SHA-256 of the served file, as `sha256sum` prints it.
    pub sha: String,
}

pub fn internet(relay_ns: &Netns) -> Internet {
    let ns = netns("twn");
    let dir = TempDir::new();
    exec_ok(
        relay_ns,
        &[
            "ip", "link", "add", "twu0", "type", "veth", "peer", "name", "twi0",
        ],
    );
    exec_ok(relay_ns, &["ip", "link", "set", "twi0", "netns", &ns.name]);
    exec_ok(
        relay_ns,
        &["ip", "addr", "add", "198.51.100.1/24", "dev", "twu0"],
    );
    exec_ok(relay_ns, &["ip", "link", "set", "twu0", "up"]);
    exec_ok(relay_ns, &["ip", "route", "add", "default", "via", SERVER]);
    exec_ok(
        &ns,
        &["ip", "addr", "add", "198.51.100.2/24", "dev", "twi0"],
    );
    exec_ok(&ns, &["ip", "link", "set", "twi0", "up"]);
    exec_ok(&ns, &["ip", "link", "set", "lo", "up"]);
    let www = dir.0.join("www");
    std::fs::create_dir_all(&www).expect("www");
    let blob: Vec<u8> = (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("blob"), &blob).expect("blob");
    // A CGI that answers with the client's address as the server sees it.
    std::fs::create_dir_all(www.join("cgi-bin")).expect("cgi-bin");
    let cgi = www.join("cgi-bin/addr");
    std::fs::write(
        &cgi,
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$REMOTE_ADDR\"\n",
    )
    .expect("cgi");
    std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let sha = exec_ok(&ns, &["sha256sum", &www.join("blob").display().to_string()])
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let http = Proc::spawn(
        ns.cmd(&[
            "busybox",
            "httpd",
            "-f",
            "-p",
            &HTTP_PORT.to_string(),
            "-h",
            &www.display().to_string(),
        ]),
        dir.0.join("httpd.log"),
    )
    .expect("httpd");
    Internet {
        ns,
        _http: http,
        _dir: dir,
        sha,
    }
}
