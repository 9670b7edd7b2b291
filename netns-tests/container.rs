//! The container image (root, podman): the Dockerfile's runtime stage, with the binary built on
//! the host in place of the build stage (no toolchain image can be pulled here), runs tapwire
//! with only `--cap-add NET_ADMIN --device /dev/net/tun` and the shipped seccomp profile, and a
//! guest takes a lease and pings the gateway through it. Under the runtime's default profile,
//! `tapwire check` in the same image blames seccomp.
//!
//! The base image (`debian:12-slim`) is made from Debian packages with mmdebstrap and imported,
//! since no registry is reachable. Everything lives in a podman storage of the test's own
//! (`--root`, `--runroot`), removed at the end (its containers and images first, then the
//! directories). Needs podman, runc and mmdebstrap; without them the test skips (counted by
//! `scripts/test.sh`; a failure under `TAPWIRE_NO_SKIP`, as in CI).

#[path = "harness.rs"]
mod harness;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::*;

const GATEWAY: &str = "10.86.0.1";

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// podman with the test's own storage; removes that storage on drop.
struct Podman {
    root: PathBuf,
    runroot: PathBuf,
}

impl Podman {
    fn cmd<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--runtime", "runc"])
            .args(args);
        c
    }

    fn ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(&self, args: &[S]) -> String {
        let out = self.cmd(args).output().expect("podman");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "podman {args:?}: {text}");
        text
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Only this storage's containers and images (`system reset` would also remove the
        // machine's podman networks, which are not the test's).
        let _ = self.cmd(&["rm", "--all", "--force"]).output();
        let _ = self.cmd(&["rmi", "--all", "--force"]).output();
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_dir_all(&self.runroot);
    }
}

#[test]
fn the_image_runs_with_the_shipped_profile_and_only_net_admin() {
    if skip_unless_root("the_image_runs_with_the_shipped_profile_and_only_net_admin") {
        return;
    }
    if !(have("podman") && have("mmdebstrap") && have("runc")) {
        tapwire_testkit::skip::skip(
            "the_image_runs_with_the_shipped_profile_and_only_net_admin",
            "podman, runc or mmdebstrap is not installed (apt-get install podman runc mmdebstrap)",
        );
        return;
    }
    let dir = TempDir::new();
    let podman = Podman {
        root: dir.0.join("storage"),
        runroot: dir.0.join("runroot"),
    };
    // The Dockerfile's base, from Debian packages.
    let base = dir.0.join("base.tar");
    let out = Command::new("mmdebstrap")
        .args(["--variant=minbase", "--quiet", "bookworm"])
        .arg(&base)
        .output()
        .expect("mmdebstrap");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    podman.ok(&[
        "import",
        &base.display().to_string(),
        "docker.io/library/debian:12-slim",
    ]);
    // The runtime stage, with the host's binary where the build stage would put it.
    let stage = dir.0.join("build-stage");
    std::fs::create_dir_all(stage.join("src/target/release")).unwrap();
    std::fs::copy(tapwire_bin(), stage.join("src/target/release/tapwire")).unwrap();
    let image = unique("localhost/tapwire-test");
    podman.ok(&[
        "build",
        "--network",
        "host",
        "--target",
        "runtime",
        "--build-context",
        &format!("build={}", stage.display()),
        "-t",
        &image,
        "-f",
        &repo().join("Dockerfile").display().to_string(),
        &repo().display().to_string(),
    ]);

    let ns = netns("twc");
    let name = unique("twc");
    let run = |extra: &[&str], args: &[&str]| {
        let mut all = vec![
            "run",
            "--network",
            &format!("ns:/run/netns/{}", ns.name),
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        all.extend(extra.iter().map(|s| s.to_string()));
        all.push(image.clone());
        all.extend(args.iter().map(|s| s.to_string()));
        all
    };
    // Without the profile, the runtime's default answers io_uring_setup with ENOSYS, and
    // `tapwire check` says it is the filter.
    let check = run(
        &["--rm", "--cap-add", "NET_ADMIN", "--device", "/dev/net/tun"],
        &["check"],
    );
    let out = podman.cmd(&check).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("seccomp"),
        "check under the default profile: {text}"
    );

    let profile = format!("seccomp={}", repo().join("dist/seccomp.json").display());
    let relay = run(
        &[
            "-d",
            "--name",
            &name,
            "--cap-add",
            "NET_ADMIN",
            "--device",
            "/dev/net/tun",
            "--security-opt",
            &profile,
        ],
        &[
            "run",
            "--listen",
            "127.0.0.1:8086",
            "--cores",
            "1",
            "--tap",
            "twc0",
        ],
    );
    podman.ok(&relay);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = podman.ok(&["logs", &name]);
        if logs.contains("relaying ws://") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tapwire did not start in the container: {logs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut g = spawn_guest(&ns, "ws://127.0.0.1:8086/", &dir.0, None);
    g.dhcp(&dir.0);
    let pinged = g.ping(GATEWAY, 3);
    let logs = podman.ok(&["logs", &name]);
    assert_eq!(pinged, 3, "{logs}");
    drop(g);
    podman.ok(&["stop", "--time", "10", &name]);
    let logs = podman.ok(&["logs", &name]);
    // Stopped, it ends with its paragraph (the full counters only at --log-level debug).
    assert!(
        logs.contains(": 1 client served, 1 at most at once;"),
        "{logs}"
    );
    let _ = podman.cmd(&["rm", "-f", &name]).output();
}
