use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

fn parse(args: &[&str]) -> Result<Config, String> {
    let mut all = vec!["tapwire"];
    all.extend_from_slice(args);
    Cli::try_parse_from(all)
        .map_err(|e| e.to_string())?
        .run
        .validate(2)
        .map_err(|e| e.to_string())
}

#[test]
fn defaults() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8086");
    assert_eq!(c.cores, 2);
    assert_eq!(c.max_frame, 1518);
    let HostSide::Routed {
        subnet,
        dhcp: Some(dhcp),
    } = c.host
    else {
        panic!()
    };
    assert_eq!(subnet.gateway(), Ipv4Addr::new(10, 86, 0, 1));
    assert_eq!(
        dhcp.range,
        (
            Ipv4Addr::new(10, 86, 0, 10),
            Ipv4Addr::new(10, 86, 255, 254)
        )
    );
}

#[test]
fn rejections_name_the_option() {
    assert!(parse(&["--subnet", "10.86.0.1/16"])
        .unwrap_err()
        .contains("host bits"));
    assert!(parse(&["--tap", "abcdefghijklmnopq"])
        .unwrap_err()
        .contains("--tap"));
    assert!(parse(&["--tap", "eth0:1"])
        .unwrap_err()
        .contains("not an interface name"));
    assert!(parse(&["--send-queue", "1"])
        .unwrap_err()
        .contains("--send-queue"));
    assert!(parse(&["--dhcp-lease-time", "1m"])
        .unwrap_err()
        .contains("at least 2m"));
    assert!(parse(&["--dhcp-range", "10.86.0.20,10.86.0.10"])
        .unwrap_err()
        .contains("comes after"));
    assert!(parse(&["--max-frame", "70000"])
        .unwrap_err()
        .contains("--max-frame"));
    assert!(parse(&["--mtu", "9000", "--max-frame", "1518"])
        .unwrap_err()
        .contains("raise --max-frame"));
    assert!(parse(&["--dhcp-range", "10.86.0.1,10.86.0.9"])
        .unwrap_err()
        .contains("gateway"));
    assert!(parse(&["--attach-bridge", "br0", "--dns", "1.1.1.1"])
        .unwrap_err()
        .contains("bridge"));
}

#[test]
fn every_log_level_is_accepted_and_listed() {
    assert_eq!(
        parse(&["--log-level", "trace"]).unwrap().log_level,
        log::LevelFilter::Trace
    );
    let e = parse(&["--log-level", "loud"]).unwrap_err();
    for level in ["error", "warn", "info", "debug", "trace"] {
        assert!(e.contains(level), "{e}");
    }
}

#[test]
fn zero_turns_pings_and_limits_off() {
    let c = parse(&["--ping-interval", "0", "--client-rate", "0"]).unwrap();
    assert_eq!(c.clients.ping_interval(), None);
    assert_eq!(c.clients.client_rate(), None);
    let c = parse(&["--client-broadcast-pps", "5"]).unwrap();
    assert_eq!(c.clients.client_broadcast_pps(), Some(5));
    assert_eq!(c.clients.ping_interval(), Some(Duration::from_secs(30)));
}

#[test]
fn jumbo_frames() {
    // The TAP's limit, named with the option when exceeded.
    let c = parse(&["--mtu", "65521"]).unwrap();
    assert_eq!(c.mtu, TAP_MAX_MTU);
    // A v86 guest at MTU 65535 sends 65549-byte frames: the default takes them.
    assert_eq!(c.max_frame, MAX_FRAME_LIMIT);
    let err = parse(&["--mtu", "65535"]).unwrap_err();
    assert!(err.contains("--mtu") && err.contains("65521"), "{err}");
    assert_eq!(parse(&["--mtu", "9000"]).unwrap().max_frame, 9018);
    let c = parse(&["--mtu", "65521", "--max-frame", "65553"]).unwrap();
    assert_eq!(c.max_frame, MAX_FRAME_LIMIT);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
    assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
    assert!(parse_duration("5y").is_err());
}

#[test]
fn nat_options() {
    assert_eq!(parse(&[]).unwrap().nat, None);
    let c = parse(&["--nat"]).unwrap();
    assert_eq!(c.nat, Some(Nat { uplink: None }));
    let c = parse(&["--nat", "--uplink", "eth0"]).unwrap();
    assert_eq!(c.nat.unwrap().uplink.unwrap().to_string(), "eth0");
    assert!(parse(&["--uplink", "eth0"])
        .unwrap_err()
        .contains("add --nat"));
    assert!(parse(&["--nat", "--attach-bridge", "br0"])
        .unwrap_err()
        .contains("routed TAP"));
}

#[test]
fn tls_options_go_together_and_load_the_certificate() {
    let dir = std::env::temp_dir().join(format!("tapwire-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, keyfile) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&keyfile, key.signing_key.serialize_pem()).unwrap();
    let (c, k) = (cert.to_str().unwrap(), keyfile.to_str().unwrap());
    assert!(parse(&[]).unwrap().tls.is_none());
    let err = parse(&["--tls-cert", c, "--tls-key", k]).unwrap_err();
    assert!(err.contains("go with --listen-tls"), "{err}");
    let err = parse(&["--listen-tls", "127.0.0.1:8443", "--tls-cert", c]).unwrap_err();
    assert!(
        err.contains("needs --tls-cert FILE and --tls-key FILE"),
        "{err}"
    );
    let err = parse(&[
        "--listen-tls",
        "127.0.0.1:8086",
        "--tls-cert",
        c,
        "--tls-key",
        k,
    ])
    .unwrap_err();
    assert!(err.contains("a port of its own"), "{err}");
    let err = parse(&[
        "--listen-tls",
        "127.0.0.1:8443",
        "--tls-cert",
        k,
        "--tls-key",
        k,
    ])
    .unwrap_err();
    assert!(err.contains("no CERTIFICATE block"), "{err}");
    let tls = parse(&[
        "--listen-tls",
        "[::1]:8443",
        "--tls-cert",
        c,
        "--tls-key",
        k,
    ])
    .unwrap()
    .tls
    .unwrap();
    assert_eq!(tls.listen.to_string(), "[::1]:8443");
    assert_eq!(tls.certs.cert_path(), cert.as_path());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn metrics_addresses_default_to_loopback() {
    assert_eq!(
        parse_metrics_addr("9186").unwrap().to_string(),
        "127.0.0.1:9186"
    );
    assert_eq!(
        parse_metrics_addr("0.0.0.0:9100").unwrap().to_string(),
        "0.0.0.0:9100"
    );
    assert!(parse_metrics_addr("localhost").is_err());
}

#[test]
fn receive_buffers_are_64_kib_for_frames_over_4_kib_in_the_same_memory() {
    // A certificate, for wss://: its plaintext buffers are receive-buffer sized.
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("tapwire-bufs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&pem, key.signing_key.serialize_pem()).unwrap();
    let (cert, pem) = (cert.display().to_string(), pem.display().to_string());
    let sizes = |args: &[&str]| {
        let e = crate::engine::EngineConfig::from_config(&parse(args).unwrap());
        let mut tls = vec!["--listen-tls", "127.0.0.1:8443", "--tls-cert", &cert];
        tls.extend(["--tls-key", &pem]);
        tls.extend_from_slice(args);
        let t = crate::engine::EngineConfig::from_config(&parse(&tls).unwrap());
        (
            e.recv_buffers,
            e.recv_buffer_size,
            e.plain_buffers,
            t.plain_buffers,
        )
    };
    assert_eq!(sizes(&[]), (2048, 16 * 1024, 0, 256));
    assert_eq!(sizes(&["--mtu", "4000"]), (2048, 16 * 1024, 0, 256));
    assert_eq!(sizes(&["--mtu", "9000"]), (512, 64 * 1024, 0, 64));
    assert_eq!(sizes(&["--mtu", "65521"]), (512, 64 * 1024, 0, 64));
    std::fs::remove_dir_all(&dir).unwrap();
}
