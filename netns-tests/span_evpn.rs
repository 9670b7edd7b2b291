//! Spanning with FRR's BGP EVPN: the guests tapwire pins in one host's bridge reach the other
//! hosts as routes.

use std::time::Duration;

use super::farm_rig::*;
use super::harness::*;
use super::span::{direct, filtered, vxlan, within, SPAN};
use tapwire_testkit::packet;

/// FRR's zebra and bgpd in host `i`'s namespace, peering over the underlay with `peers` for
/// EVPN (iBGP, `advertise-all-vni`); stopped when dropped.
fn frr(farm: &Farm, i: usize, peers: &[&str], dir: &TempDir) -> Vec<Proc> {
    let home = dir.0.join(format!("frr{i}"));
    std::fs::create_dir_all(&home).expect("frr dir");
    // The daemons run as user frr: it needs to reach and write its directory.
    for p in [&dir.0, &home] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
    }
    let ip = HOST_IPS[i];
    let mut bgp = format!(
        "frr defaults datacenter\nrouter bgp 65000\n bgp router-id {ip}\n no bgp default ipv4-unicast\n"
    );
    for p in peers {
        bgp.push_str(&format!(" neighbor {p} remote-as 65000\n"));
    }
    bgp.push_str(" address-family l2vpn evpn\n");
    for p in peers {
        bgp.push_str(&format!("  neighbor {p} activate\n"));
    }
    bgp.push_str("  advertise-all-vni\n exit-address-family\n");
    std::fs::write(home.join("bgpd.conf"), bgp).expect("bgpd.conf");
    std::fs::write(home.join("zebra.conf"), "").expect("zebra.conf");
    let h = home.display().to_string();
    let daemon = |name: &str| {
        let conf = format!("{h}/{name}.conf");
        let pid = format!("{h}/{name}.pid");
        let zserv = format!("{h}/zserv.api");
        let mut args = vec![
            format!("/usr/lib/frr/{name}"),
            "-f".into(),
            conf,
            "-i".into(),
            pid,
            "-z".into(),
            zserv,
            "--vty_socket".into(),
            h.clone(),
            "-u".into(),
            "frr".into(),
            "-g".into(),
            "frr".into(),
        ];
        if name == "bgpd" {
            // No BGP for the namespace's other addresses: only the peers'.
            args.extend(["-l".into(), ip.to_string()]);
        }
        Proc::spawn(
            farm.hosts[i].ns.cmd(&str_refs(&args)),
            home.join(format!("{name}.log")),
        )
        .expect("FRR daemon")
    };
    let zebra = daemon("zebra");
    assert!(
        within(Duration::from_secs(10), || home.join("zserv.api").exists()),
        "zebra did not start: {}",
        zebra.log_text()
    );
    let bgpd = daemon("bgpd");
    vec![bgpd, zebra]
}

/// Whether FRR's daemons are installed (Debian's `frr`).
fn skip_unless_frr(test: &str) -> bool {
    if skip_unless_haproxy(test) {
        return true;
    }
    if std::path::Path::new("/usr/lib/frr/bgpd").exists() {
        return false;
    }
    tapwire_testkit::skip::skip(test, "FRR is not installed (apt-get install frr)");
    true
}

#[test]
fn with_frr_evpn_a_guest_is_known_to_the_other_hosts_before_it_sends_anything_across() {
    let test = "with_frr_evpn_a_guest_is_known_to_the_other_hosts_before_it_sends_anything_across";
    if skip_unless_frr(test) {
        return;
    }
    let farm = Farm::start_with(&SPAN);
    let dir = TempDir::new();
    let _frr_a = frr(&farm, 0, &[HOST_IPS[2]], &dir);
    let _frr_c = frr(&farm, 2, &[HOST_IPS[0]], &dir);
    // The network on hC first (its VXLAN device is what FRR installs remote MACs on), then a
    // guest on hA that leases and sends nothing else.
    let mut on_c = direct(&farm, 2);
    lease(&mut on_c, guest_mac(8, 2));
    let vx_c = vxlan(&farm, 2);
    let mut s = direct(&farm, 0);
    let s_mac = guest_mac(8, 0);
    lease(&mut s, s_mac);
    let s_text = packet::format_mac(s_mac);
    // tapwire pins it in hA's bridge; zebra reads the entry, bgpd sends it as a type-2 route,
    // and hC's zebra writes it into hC's VXLAN device as extern_learn.
    let fdb = || exec_ok(&farm.hosts[2].ns, &["bridge", "fdb", "show", "dev", &vx_c]);
    assert!(
        within(Duration::from_secs(30), || fdb()
            .lines()
            .any(|l| l.starts_with(&s_text)
                && l.contains("dst 10.250.0.11")
                && l.contains("extern_learn"))),
        "hC did not learn {s_text} from EVPN: {}",
        fdb()
    );
    // Its only broadcasts (DHCP) never crossed: hC's filter saw no DHCP from the overlay.
    assert_eq!(filtered(&farm, 2, "iifname @ports udp dport 67"), 0);
}
