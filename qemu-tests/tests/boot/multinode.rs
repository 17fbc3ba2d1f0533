//! Several nodes, one release (issue 33, docs/multi-node.md): the
//! single-node test's image (recipes/field-ai-kube.toml, which allows the
//! cluster's site settings) booted twice under QEMU, each copy with its own
//! signed site file: `node-a`, the server, and `node-b`, an agent. The two
//! guests share one private segment: a datagram link between two unix
//! socket files of this test (QEMU's dgram backend), with the server's
//! restrict=on slirp on the same hub for the host's NodePort forward and a
//! guestfwd to this test's listener; nothing else is reachable.
//!
//! Judged from outside (the host's forward and listener, the serial
//! consoles, the server's API through its debug console):
//! - both nodes Ready; the recipe's Deployment, at two replicas with
//!   anti-affinity, runs one pod on each node;
//! - a request from the host through the server's NodePort reaches the
//!   agent's pod (the Service narrowed to it) over the VXLAN overlay;
//! - NetworkPolicy between the pods: the namespace's default deny stops the
//!   server's pod reaching the agent's; with an egress allow it is
//!   answered (control); without the workload's ingress allow, the agent
//!   stops it again;
//! - the agent's egress: the listener behind the server's slirp is not
//!   reached (control: with one accept it is), the server's API port is;
//! - the agent power-cycled: Ready again as a new Node, the old one gone,
//!   the workload spread again; the server power-cycled: a new control
//!   plane, the agent rejoins by itself, the recipe's workload comes back
//!   (times printed);
//! - a site file signed by another key, or naming a role that is not one
//!   of the release's, halts that node with one `cairn: FATAL site:` line
//!   (the good files above are the controls).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn::release::site::{self, SignedSite};
use cairn::vm::qemu::{BootSpec, Firmware, PeerLink, Vm};
use qemu_tests::*;

const SERVER_IP: &str = "10.0.2.15";
const AGENT_IP: &str = "10.0.2.16";
const LISTENER_IP: &str = "10.0.2.100";
/// A throwaway bootstrap token for this test's cluster (public, as the
/// site test key is).
const TOKEN: &str = "cairnt.0123456789abcdef";
const KUBECTL: &str = "KUBECONFIG=/run/cairn/kubernetes/pki/admin.kubeconfig kubectl";
const PREDICT: &str = "/predict?x=5.1,3.5,1.4,0.2";

fn kubectl(vm: &mut Vm, args: &str) -> (i32, String) {
    vm.console_run(&format!("{KUBECTL} {args} 2>&1"), console_timeout())
        .expect("debug console")
}

fn site_text(host: &str, addr: &str, role: &str, expires: &str) -> String {
    let server = if role == "agent" {
        format!("server = \"{SERVER_IP}\"\n")
    } else {
        String::new()
    };
    format!(
        "# {host}\nname = \"{host}\"\nserial = \"1\"\nhostname = \"{host}\"\naddress = \"{addr}/24\"\nrole = \"{role}\"\n{server}peers = [\"{SERVER_IP}\", \"{AGENT_IP}\"]\njoin_token = \"{TOKEN}\"\njoin_expires = \"{expires}\"\n"
    )
}

/// A copy of the release with `text` as its signed site file.
fn node_image(raw: &Path, dir: &Path, name: &str, text: &str) -> PathBuf {
    let decl = site::declaration_beside(raw).expect("the release takes site files");
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).expect("write site file");
    site::sign(&file, &site_test_key(), &decl).expect("sign");
    let img = dir.join(format!("{name}.raw"));
    site::apply(raw, &file, &img, site::ReleaseTrust::Unverified).expect("apply");
    img
}

fn spec(img: &Path, log: &str, link: PeerLink) -> BootSpec {
    let mut s = BootSpec::new(img, cairn::media::RAW.qemu, Firmware::Uefi, log_path(log));
    s.debug_console = true;
    s.memory_mib = 3072;
    s.cpus = 1;
    s.peer_link = Some(link);
    s
}

/// QEMU's slirp, on the test's shared segment for the host's forward and
/// listener, acts as a router for every IPv4 packet it sees, whatever its
/// MAC: restricted, it answers a TCP segment between the two nodes with a
/// reset in the other node's name. Those forged segments (slirp's MAC, a
/// source address that is not slirp's) are dropped on each node, from its
/// debug console as soon as its firewall table exists: an artefact of the
/// test network, which a real segment does not have. In prerouting at raw
/// priority: before conntrack, which a forged reset would otherwise close.
fn ignore_slirp_forgeries(vm: &mut Vm, who: &str) {
    let rule = "nft insert rule inet cairn prerouting ether saddr 52:55:0a:00:02:02 ip saddr != { 10.0.2.2, 10.0.2.3, 10.0.2.100 } drop";
    let end = Instant::now() + Duration::from_secs(600);
    loop {
        let (rc, out) = match vm.console_run(&format!("{rule} 2>&1"), console_timeout() * 4) {
            Ok(r) => r,
            Err(e) => (-1, format!("debug console: {e:#}")),
        };
        if rc == 0 {
            return;
        }
        assert!(Instant::now() < end, "{who}: {out}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn wait_ready(vm: &mut Vm, who: &str, within: Duration) -> Duration {
    let t = Instant::now();
    let (i, line) = vm
        .wait_for_any(&["cairn: ready", "cairn: FATAL"], within)
        .unwrap_or_else(|e| panic!("{who}: not ready: {e:#}\n{}", vm.serial_text()));
    assert_eq!(i, 0, "{who}: {line}\n{}", vm.serial_text());
    t.elapsed()
}

/// `NODE READY` per node, from the server.
fn nodes(server: &mut Vm) -> Vec<(String, String)> {
    let (_, out) = kubectl(
        server,
        "get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}'",
    );
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, r)| (n.to_string(), r.trim().to_string()))
        .collect()
}

/// Waits until exactly two nodes are Ready, one of them named `agent_prefix-*`.
fn wait_two_ready(server: &mut Vm, within: Duration) -> Vec<(String, String)> {
    let end = Instant::now() + within;
    loop {
        let n = nodes(server);
        if n.len() == 2 && n.iter().all(|(_, r)| r == "True") {
            return n;
        }
        assert!(Instant::now() < end, "two Ready nodes: {n:?}");
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// The inference pods as (node, pod IP, name), once `want` of them are Ready.
fn ready_pods(server: &mut Vm, want: usize, within: Duration) -> Vec<(String, String, String)> {
    let end = Instant::now() + within;
    loop {
        let (_, out) = kubectl(
            server,
            "-n cairn get pods -l app.kubernetes.io/name=inference -o jsonpath='{range .items[*]}{.spec.nodeName} {.status.podIP} {.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.deletionTimestamp}{\"\\n\"}{end}'",
        );
        let pods: Vec<(String, String, String)> = out
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 4 && f[3] == "True")
                    .then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
            })
            .collect();
        if pods.len() == want {
            return pods;
        }
        assert!(Instant::now() < end, "{want} Ready inference pods: {out}");
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// Two replicas, never two on one node.
fn spread(server: &mut Vm) {
    let (rc, out) = kubectl(
        server,
        "-n cairn patch deployment inference --type merge -p '{\"spec\":{\"replicas\":2,\"template\":{\"spec\":{\"affinity\":{\"podAntiAffinity\":{\"requiredDuringSchedulingIgnoredDuringExecution\":[{\"topologyKey\":\"kubernetes.io/hostname\",\"labelSelector\":{\"matchLabels\":{\"app.kubernetes.io/name\":\"inference\"}}}]}}}}}}'",
    );
    assert_eq!(rc, 0, "{out}");
}

fn assert_spread(pods: &[(String, String, String)], agent: &str) {
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(pods.iter().any(|p| p.0 == "node-a"), "{pods:?}");
    assert!(pods.iter().any(|p| p.0 == agent), "{pods:?}");
}

fn agent_name(nodes: &[(String, String)]) -> String {
    nodes
        .iter()
        .map(|n| n.0.clone())
        .find(|n| n.starts_with("node-b-"))
        .unwrap_or_else(|| panic!("no agent node: {nodes:?}"))
}

/// From the server's pod to `ip`:8080, through the pods' own network.
fn pod_to_pod(server: &mut Vm, from: &str, ip: &str) -> String {
    let (_, out) = kubectl(
        server,
        &format!("-n cairn exec {from} -- python3 -c \"import urllib.request as u; print('ANSWER', u.urlopen('http://{ip}:8080{PREDICT}', timeout=8).read())\""),
    );
    out
}

fn diagnose(vm: &mut Vm, who: &str) {
    for cmd in [
        &format!("{KUBECTL} get nodes,pods,endpointslices,networkpolicies -A -o wide"),
        "ip -d link show flannel.1; ip route; bridge fdb show dev flannel.1; ip neigh show dev flannel.1",
        "nft list ruleset | head -80",
        "journalctl -b --no-pager -n 60 -u cairn-kubelet -u cairn-kube-join -u cairn-kube-rejoin -u cairn-kube-overlay",
    ] {
        match vm.console_run(&format!("{cmd} 2>&1"), console_timeout()) {
            Ok((rc, out)) => eprintln!("diagnose {who}: $ {cmd}\n(rc {rc})\n{out}"),
            Err(e) => eprintln!("diagnose {who}: $ {cmd}: {e:#}"),
        }
    }
}

#[test]
fn two_nodes_from_one_release_join_spread_enforce_and_recover() {
    let b = built("recipes/field-ai-kube.toml");
    let tmp = tempfile::tempdir().expect("tempdir");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let expires = cairn::host::time::rfc3339(now + 86_400);
    let server_img = node_image(
        &b.raw,
        tmp.path(),
        "node-a",
        &site_text("node-a", SERVER_IP, "server", &expires),
    );
    let agent_img = node_image(
        &b.raw,
        tmp.path(),
        "node-b",
        &site_text("node-b", AGENT_IP, "agent", &expires),
    );
    let (a_sock, b_sock) = (tmp.path().join("a.sock"), tmp.path().join("b.sock"));
    let listener = Listener::start();
    let port = free_port();
    let server_spec = {
        let mut s = spec(
            &server_img,
            "multinode-server",
            PeerLink {
                local: a_sock.clone(),
                remote: b_sock.clone(),
                mac: [0x52, 0x54, 0, 0xca, 0, 0x15],
            },
        );
        s.network = true;
        s.cpus = 2;
        s.forwards = vec![(port, 8080)];
        s.guestfwds = vec![(LISTENER_IP.parse().expect("ip"), 8080, listener.addr)];
        s
    };
    let agent_spec = {
        let mut s = spec(
            &agent_img,
            "multinode-agent",
            PeerLink {
                local: b_sock.clone(),
                remote: a_sock.clone(),
                mac: [0x52, 0x54, 0, 0xca, 0, 0x16],
            },
        );
        s.memory_mib = 2048;
        s
    };
    let t0 = Instant::now();
    let mut server = Vm::start(&server_spec).expect("start the server");
    let mut agent = Vm::start(&agent_spec).expect("start the agent");
    ignore_slirp_forgeries(&mut server, "server");
    ignore_slirp_forgeries(&mut agent, "agent");
    wait_ready(&mut server, "server", boot_timeout() * 8);
    let server_ready = t0.elapsed();
    wait_ready(&mut agent, "agent", boot_timeout() * 8);
    let nodes_now = wait_two_ready(&mut server, Duration::from_secs(300));
    let cluster_ready = t0.elapsed();
    eprintln!(
        "multinode: server ready {:.1}s, agent ready and both nodes Ready {:.1}s (boot to a 2-node cluster, under {:?})",
        server_ready.as_secs_f64(),
        cluster_ready.as_secs_f64(),
        Vm::accel()
    );
    let serial = server.serial_text();
    assert!(
        serial.contains("cairn: cluster: agents may join with token cairnt until"),
        "{serial}"
    );
    let agent_serial = agent.serial_text();
    for word in [
        "cairn: cluster: the server 10.0.2.15 verified with the join token; joining",
        "cairn: cluster: overlay to 1 peer(s) over VXLAN",
    ] {
        assert!(
            agent_serial.contains(word),
            "agent without `{word}`: {agent_serial}"
        );
    }
    let agent_node = agent_name(&nodes_now);

    // One pod on each node.
    spread(&mut server);
    let pods = ready_pods(&mut server, 2, Duration::from_secs(600));
    if pods.iter().all(|p| p.0 != agent_node) {
        diagnose(&mut server, "server");
        diagnose(&mut agent, "agent");
    }
    assert_spread(&pods, &agent_node);
    let on_agent = pods
        .iter()
        .find(|p| p.0 == agent_node)
        .cloned()
        .expect("agent pod");
    let on_server = pods
        .iter()
        .find(|p| p.0 == "node-a")
        .cloned()
        .expect("server pod");
    assert!(on_agent.1.starts_with("10.42.16."), "{on_agent:?}");

    // The host, through the server's NodePort, to the agent's pod only.
    let (rc, out) = kubectl(
        &mut server,
        &format!("-n cairn label pod {} cairn-test/at=agent && {KUBECTL} -n cairn patch service inference --type merge -p '{{\"spec\":{{\"selector\":{{\"cairn-test/at\":\"agent\"}}}}}}'", on_agent.2),
    );
    assert_eq!(rc, 0, "{out}");
    let end = Instant::now() + Duration::from_secs(120);
    let answer = loop {
        let a = http_get_path(port, PREDICT, Duration::from_secs(10));
        if a.contains("\"class\"") || Instant::now() >= end {
            break a;
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    if !answer.contains("\"class\": \"setosa\"") {
        diagnose(&mut server, "server");
        diagnose(&mut agent, "agent");
    }
    assert!(answer.contains("\"class\": \"setosa\""), "{answer}");
    let (_, eps) = kubectl(
        &mut server,
        "-n cairn get endpointslices -l kubernetes.io/service-name=inference -o jsonpath='{.items[*].endpoints[*].addresses[*]}'",
    );
    assert_eq!(
        eps.trim(),
        on_agent.1,
        "the Service reaches the agent's pod only"
    );

    // NetworkPolicy across nodes: the default deny (egress) stops the
    // server's pod; an egress allow lets it through (control); without
    // the workload's ingress allow, the agent's node stops it.
    let out = pod_to_pod(&mut server, &on_server.2, &on_agent.1);
    // Refused by the network: the request ran (a traceback), and failed.
    assert!(
        !out.contains("ANSWER") && out.contains("Traceback"),
        "the default deny let pod to pod through, or the exec failed: {out}"
    );
    let allow = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"test-egress","namespace":"cairn"},"spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{"to":[{"podSelector":{}}],"ports":[{"port":8080,"protocol":"TCP"}]}]}}"#;
    let (rc, out) = kubectl(&mut server, &format!("apply -f - <<'EOF'\n{allow}\nEOF\n"));
    assert_eq!(rc, 0, "{out}");
    let end = Instant::now() + Duration::from_secs(120);
    let out = loop {
        let out = pod_to_pod(&mut server, &on_server.2, &on_agent.1);
        if out.contains("ANSWER") || Instant::now() >= end {
            break out;
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    assert!(
        out.contains("ANSWER") && out.contains("setosa"),
        "control: allowed, pod to pod across nodes failed: {out}"
    );
    let (rc, out) = kubectl(
        &mut server,
        "-n cairn delete networkpolicy inference-ingress",
    );
    assert_eq!(rc, 0, "{out}");
    let end = Instant::now() + Duration::from_secs(120);
    let out = loop {
        let out = pod_to_pod(&mut server, &on_server.2, &on_agent.1);
        if !out.contains("ANSWER") || Instant::now() >= end {
            break out;
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    assert!(
        !out.contains("ANSWER") && out.contains("Traceback"),
        "the agent did not enforce the ingress deny, or the exec failed: {out}"
    );

    // The agent's egress: the server's API port, yes; anything else, no.
    let probe = |vm: &mut Vm, ip: &str, port: u16| {
        vm.console_run(
            &format!(
                "timeout 8 bash -c 'exec 3<>/dev/tcp/{ip}/{port}; printf cairn-agent >&3' 2>&1"
            ),
            console_timeout(),
        )
        .expect("console")
        .0
    };
    assert_eq!(
        probe(&mut agent, SERVER_IP, 6443),
        0,
        "the agent cannot reach the API server"
    );
    assert_ne!(
        probe(&mut agent, SERVER_IP, 2379),
        0,
        "the agent reached the server's etcd port"
    );
    assert_ne!(
        probe(&mut agent, LISTENER_IP, 8080),
        0,
        "the agent reached the host listener"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        listener.received(),
        "",
        "the listener received the agent's bytes"
    );
    let (rc, out) = agent
        .console_run(
            &format!("nft insert rule inet cairn output ip daddr {LISTENER_IP} tcp dport 8080 accept 2>&1"),
            console_timeout(),
        )
        .expect("console");
    assert_eq!(rc, 0, "{out}");
    assert_eq!(
        probe(&mut agent, LISTENER_IP, 8080),
        0,
        "control: with an accept the agent cannot reach the listener"
    );
    let end = Instant::now() + Duration::from_secs(20);
    while listener.received() != "cairn-agent" && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        listener.received(),
        "cairn-agent",
        "control: the listener got nothing"
    );

    // The agent power-cycled: a new Node, the old one removed, spread again.
    drop(agent);
    let t = Instant::now();
    let mut agent = Vm::start(&agent_spec).expect("restart the agent");
    ignore_slirp_forgeries(&mut agent, "agent");
    wait_ready(&mut agent, "agent after its reboot", boot_timeout() * 8);
    let end = Instant::now() + Duration::from_secs(600);
    let new_nodes = loop {
        let n = nodes(&mut server);
        if n.len() == 2
            && n.iter().all(|(_, r)| r == "True")
            && !n.iter().any(|x| x.0 == agent_node)
        {
            break n;
        }
        assert!(
            Instant::now() < end,
            "the agent's old Node is still there, or the new one not Ready: {n:?}"
        );
        std::thread::sleep(Duration::from_secs(5));
    };
    let agent_node2 = agent_name(&new_nodes);
    assert_ne!(agent_node2, agent_node, "a fresh identity");
    let pods = ready_pods(&mut server, 2, Duration::from_secs(900));
    assert_spread(&pods, &agent_node2);
    eprintln!(
        "multinode: agent power-cycled; Ready as {agent_node2} (was {agent_node}) and the workload spread again after {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // The server power-cycled: a new control plane; the agent rejoins.
    drop(server);
    let t = Instant::now();
    let mut server = Vm::start(&server_spec).expect("restart the server");
    ignore_slirp_forgeries(&mut server, "server");
    wait_ready(&mut server, "server after its reboot", boot_timeout() * 8);
    let server_back = t.elapsed();
    agent
        .wait_for_line(
            "has a new control plane; joining it again",
            Duration::from_secs(900),
        )
        .unwrap_or_else(|e| panic!("the agent did not rejoin: {e:#}\n{}", agent.serial_text()));
    let n = wait_two_ready(&mut server, Duration::from_secs(900));
    let rejoined = t.elapsed();
    spread(&mut server);
    let pods = ready_pods(&mut server, 2, Duration::from_secs(900));
    assert_spread(&pods, &agent_name(&n));
    eprintln!(
        "multinode: server power-cycled; ready {:.1}s, agent rejoined {:.1}s, workload spread again {:.1}s",
        server_back.as_secs_f64(),
        rejoined.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    for (who, vm) in [("server", &server), ("agent", &agent)] {
        let s = vm.serial_text();
        assert!(!s.contains("cairn: FATAL"), "{who}: {s}");
    }
    drop(server);
    drop(agent);

    // Bad site files halt the node (the good ones above are the controls).
    let good = std::fs::read_to_string(tmp.path().join("node-b.toml")).expect("signed text");
    let key = site_test_key();
    let other = cairn::release::signify::generate();
    let base = SignedSite {
        path: tmp.path().join("node-b.toml"),
        name: "node-b".into(),
        key_id: key.public().key_id(),
        text: good.clone().into_bytes(),
        sig: Vec::new(),
        role: "agent".into(),
        node: Some("node-b".into()),
    };
    let worker = good.replace("role = \"agent\"", "role = \"worker\"");
    for (name, text, signer, why) in [
        (
            "other-key",
            good.clone(),
            &other,
            "signature does not verify",
        ),
        (
            "role-worker",
            worker,
            &key,
            "role worker is not server or agent",
        ),
    ] {
        let bad = SignedSite {
            sig: signer
                .sign(text.as_bytes())
                .to_file_text("sites.pub")
                .into_bytes(),
            text: text.into_bytes(),
            ..base.clone()
        };
        let img = copy_image(&b.raw, tmp.path(), &format!("{name}.raw"));
        site::write_to_medium(&img, &bad).expect("write to the ESP");
        let mut s = BootSpec::new(
            &img,
            cairn::media::RAW.qemu,
            Firmware::Uefi,
            log_path(&format!("multinode-{name}")),
        );
        s.memory_mib = 2048;
        let mut vm = Vm::start(&s).expect("start");
        let (i, line) = vm
            .wait_for_any(&["cairn: ready", "cairn: FATAL"], boot_timeout())
            .unwrap_or_else(|e| panic!("{name}: no verdict: {e:#}"));
        assert_eq!(i, 1, "{name}: the bad site file reached ready: {line}");
        assert!(
            line.contains("cairn: FATAL site: ") && line.contains(why),
            "{name}: {line}"
        );
        assert_eq!(
            vm.serial_text().matches("cairn: FATAL").count(),
            1,
            "{name}: one FATAL line"
        );
        drop(vm);
        std::fs::remove_file(&img).expect("remove the copy");
    }
}
