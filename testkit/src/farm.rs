//! The farm of docs/scale-out.md on one machine, for the netns tests and relay-bench: a
//! balancer namespace holding the underlay bridge (MTU 9000) and HAProxy with the shipped
//! `examples/haproxy.cfg`, and host namespaces on that bridge at the addresses the example
//! names.

use std::io::{Read, Write};
use std::path::Path;

use crate::netns::Netns;

/// The balancer's address on the underlay, and the hosts'.
pub const LB_IP: &str = "10.250.0.2";
pub const HOST_IPS: [&str; 3] = ["10.250.0.11", "10.250.0.12", "10.250.0.13"];
pub const HOST_NAMES: [&str; 3] = ["hA", "hB", "hC"];
/// Where HAProxy listens in the balancer's namespace.
pub const LB_PORT: u16 = 8080;

fn run(ns: &Netns, args: &[&str]) -> std::io::Result<()> {
    ns.run(args).map(drop)
}

/// Makes the underlay: bridge `br0` at [`LB_IP`] in `lb`, and in each of `hosts` (at most
/// three) a link `ul0` at its address of [`HOST_IPS`], all with MTU 9000.
pub fn wire(lb: &Netns, hosts: &[&Netns]) -> std::io::Result<()> {
    run(lb, &["ip", "link", "set", "lo", "up"])?;
    run(lb, &["ip", "link", "add", "br0", "type", "bridge"])?;
    run(lb, &["ip", "link", "set", "br0", "mtu", "9000", "up"])?;
    run(
        lb,
        &["ip", "addr", "add", &format!("{LB_IP}/24"), "dev", "br0"],
    )?;
    for (i, (ns, ip)) in hosts.iter().zip(HOST_IPS).enumerate() {
        let port = format!("ul{i}");
        run(
            lb,
            &[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns",
                &ns.name,
            ],
        )?;
        run(lb, &["ip", "link", "set", &port, "master", "br0"])?;
        run(lb, &["ip", "link", "set", &port, "mtu", "9000", "up"])?;
        run(ns, &["ip", "link", "set", "lo", "up"])?;
        run(ns, &["ip", "link", "set", "ul0", "mtu", "9000", "up"])?;
        run(
            ns,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "ul0"],
        )?;
    }
    Ok(())
}

/// The shipped HAProxy configuration, listening on 127.0.0.1:[`LB_PORT`] and with a stats
/// socket at `socket` (to read the servers' health).
pub fn haproxy_config(socket: &Path) -> String {
    include_str!("../../examples/haproxy.cfg")
        .replace(
            "global\n",
            &format!(
                "global\n    stats socket {} mode 600 level admin\n",
                socket.display()
            ),
        )
        .replace("bind :8080", &format!("bind 127.0.0.1:{LB_PORT}"))
}

/// HAProxy's view of each host (`UP`, `DOWN`, ...) through the stats socket at `socket`, in
/// host order (empty strings while it cannot be read).
pub fn server_states(socket: &Path) -> Vec<String> {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return vec![String::new(); HOST_NAMES.len()];
    };
    let _ = s.write_all(b"show stat\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(sv), Some(status)) = (col("svname"), col("status")) else {
        return vec![String::new(); HOST_NAMES.len()];
    };
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    HOST_NAMES
        .iter()
        .map(|name| {
            rows.iter()
                .find(|r| r.get(sv) == Some(name))
                .and_then(|r| r.get(status))
                .map_or(String::new(), |s| s.to_string())
        })
        .collect()
}
