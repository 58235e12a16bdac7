//! Egress through the host's proxy, against real servers on the host's
//! loopback (HTTP, and HTTPS with a CA made at test time, passed as the
//! sandbox's trust) and the real engine: the client libraries of the data
//! image reach allowed hosts unchanged; every other connection is refused
//! with an answer that names why and the variable to change, and the run
//! goes on; nothing leaves the sandbox except through the proxy; the
//! run's bounds hold; connections end with their run.
//!
//! The servers listen on 127.0.0.1, so the services here allow the
//! loopback network (`MCP_BRIDGE_ALLOW_NETS=127.0.0.0/8`), except the one
//! that checks a name resolving to loopback is refused without it.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::util::web::{self, WebServers};
use crate::util::{block_on, containers_of, one_sandbox, run_on, test_config, wait_until, warmed};
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::{CaBundle, Config};
use mcp_code_exec::egress::{Outcome, Policy};
use mcp_code_exec::report::{RunReport, RunStatus};
use mcp_code_exec::service::Service;

/// The suite's servers, started once on the crate's executor.
fn servers() -> &'static WebServers {
    static SERVERS: OnceLock<WebServers> = OnceLock::new();
    SERVERS.get_or_init(|| block_on(web::start(Some(web::wheels()))))
}

/// The test configuration allowing the suite's servers (and loopback), and
/// trusting their CA; `change` adjusts it further.
fn config_with(hosts: &str, nets: &str, change: impl FnOnce(&mut Config)) -> Config {
    config_for(servers(), hosts, nets, change)
}

fn config_for(
    servers: &WebServers,
    hosts: &str,
    nets: &str,
    change: impl FnOnce(&mut Config),
) -> Config {
    let mut config = test_config();
    config.egress.policy = Policy::parse(hosts, nets).unwrap();
    config.egress.ca_bundle = Some(CaBundle {
        path: "test-ca.pem".into(),
        pem: servers.ca_pem.clone(),
    });
    change(&mut config);
    config
}

fn allowed() -> Config {
    config_with(&servers().allow_hosts(), "127.0.0.0/8,::1/128", |_| {})
}

/// A warm service of `config`, shut down when the test is done.
struct Running(Service);

impl Drop for Running {
    fn drop(&mut self) {
        block_on(self.0.shutdown());
    }
}

fn service(config: Config) -> Running {
    Running(warmed(Service::new(config)))
}

/// Runs `code` with `{http}` and `{https}` replaced by the servers' base URLs.
fn run(service: &Running, code: &str) -> RunReport {
    let servers = servers();
    let code = code
        .replace("{http}", &format!("http://localhost:{}", servers.http_port))
        .replace(
            "{https}",
            &format!("https://localhost:{}", servers.https_port),
        );
    run_on(&service.0, &code, Some(60.0))
}

fn assert_success(report: &RunReport) {
    assert_eq!(report.status, RunStatus::Success, "{report:#?}");
}

engine_test! {
    /// urllib, requests, httpx, pandas and aiohttp (with trust_env) fetch
    /// over HTTP and HTTPS through the proxy, unchanged; each connection is
    /// listed in the result with its bytes.
    fn each_client_library_fetches_through_the_proxy() {
        let service = service(allowed());
        let report = run(&service, r#"
import asyncio, os, urllib.request
import aiohttp, httpx, pandas, requests
print(os.environ["HTTPS_PROXY"], repr(os.environ["NO_PROXY"]))
print("urllib", urllib.request.urlopen("{http}/hello").read().decode().strip())
print("urllib-tls", urllib.request.urlopen("{https}/hello").read().decode().strip())
print("requests", requests.get("{https}/hello").text.strip())
print("httpx", httpx.get("{https}/hello").text.strip())
print("pandas", int(pandas.read_csv("{https}/data.csv").b.sum()))
async def fetch():
    async with aiohttp.ClientSession(trust_env=True) as session:
        async with session.get("{https}/hello") as response:
            return (await response.text()).strip()
print("aiohttp", asyncio.run(fetch()))
"#);
        assert_success(&report);
        let hello = "hello from the test server";
        for line in [
            format!("urllib {hello}"),
            format!("urllib-tls {hello}"),
            format!("requests {hello}"),
            format!("httpx {hello}"),
            "pandas 6".into(),
            format!("aiohttp {hello}"),
        ] {
            assert!(report.stdout.contains(&line), "{line:?} missing:\n{}", report.stdout);
        }
        assert!(report.stdout.starts_with("http://127.0.0.1:3128 ''"), "{}", report.stdout);
        assert!(report.egress.len() >= 6, "{:#?}", report.egress);
        assert!(report.egress.iter().all(|c| c.outcome == Outcome::Allowed && c.host == "localhost"));
        assert!(report.egress.iter().all(|c| c.bytes_received > 0 && c.bytes_sent > 0));
        assert!(report.notes.is_empty(), "{:?}", report.notes);
    }
}

engine_test! {
    /// pip downloads a wheel from a package index it reaches through the
    /// proxy, trusting the index's CA (as a corporate re-signing proxy needs).
    fn pip_downloads_from_an_index_through_the_proxy() {
        let service = service(allowed());
        let report = run(&service, r#"
import subprocess, sys, os
done = subprocess.run(
    [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
     "--index-url", "{https}/simple", "-d", "/tmp/wheels", "six"],
    capture_output=True, text=True)
print(done.returncode, os.listdir("/tmp/wheels") if os.path.isdir("/tmp/wheels") else [], done.stderr[-2000:])
"#);
        assert_success(&report);
        assert!(report.stdout.starts_with("0 ['six-"), "{}", report.stdout);
    }
}

engine_test! {
    /// Refused, each with its reason, and the run goes on: a host not in
    /// the allowlist, an IP literal not listed, the metadata address even
    /// when listed, a redirect to a host not allowed (the proxy never
    /// follows it; the client's second request is refused).
    fn refusals_are_answers_and_the_run_goes_on() {
        let hosts = format!("{},169.254.169.254", servers().allow_hosts());
        let service = service(config_with(&hosts, "127.0.0.0/8", |_| {}));
        let report = run(&service, r#"
import urllib.request, urllib.error, requests
for url in ["http://not-allowed.example/", "https://93.184.216.34/", "http://169.254.169.254/latest/meta-data/"]:
    try:
        urllib.request.urlopen(url, timeout=10)
        print("FETCHED", url)
    except Exception as error:
        print("refused", url, "|", error)
response = requests.get("{http}/redirect/elsewhere.example/", timeout=10)
print("redirect", [r.status_code for r in response.history], response.status_code, "|", response.reason)
print("the run goes on")
"#);
        assert_success(&report);
        assert!(!report.stdout.contains("FETCHED"), "{}", report.stdout);
        assert!(report.stdout.contains("the run goes on"));
        let line = |needle: &str| {
            report
                .stdout
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle}:\n{}", report.stdout))
                .to_owned()
        };
        assert!(line("not-allowed.example").contains("MCP_BRIDGE_ALLOW_HOSTS"));
        assert!(line("93.184.216.34").contains("not in MCP_BRIDGE_ALLOW_HOSTS"));
        let metadata = line("refused http://169.254.169.254");
        assert!(metadata.contains("link-local"), "{metadata}");
        // The client followed the redirect itself; its second request was refused.
        assert!(line("redirect [302] 403").contains("elsewhere.example:80 is not in"), "{}", report.stdout);
        let outcomes: Vec<(&str, Outcome)> = report.egress.iter().map(|c| (c.host.as_str(), c.outcome)).collect();
        for expected in [
            ("not-allowed.example", Outcome::RefusedHost),
            ("93.184.216.34", Outcome::RefusedHost),
            ("169.254.169.254", Outcome::RefusedAddress),
            ("localhost", Outcome::Allowed),
            ("elsewhere.example", Outcome::RefusedHost),
        ] {
            assert!(outcomes.contains(&expected), "{expected:?} not in {outcomes:?}");
        }
        assert!(
            report.notes.iter().any(|n| n.contains("not-allowed.example") && n.contains("MCP_BRIDGE_ALLOW_HOSTS")),
            "{:?}",
            report.notes
        );
    }
}

engine_test! {
    /// A name in the allowlist that resolves only to loopback is refused
    /// (the address is checked, not only the name) unless a network allows it.
    fn a_name_resolving_to_a_private_address_is_refused() {
        let service = service(config_with(&servers().allow_hosts(), "", |_| {}));
        let report = run(&service, r#"
import urllib.request
try:
    urllib.request.urlopen("{http}/hello", timeout=10)
    print("FETCHED")
except Exception as error:
    print("refused |", error)
"#);
        assert_success(&report);
        assert!(report.stdout.contains("loopback address"), "{}", report.stdout);
        assert!(report.stdout.contains("MCP_BRIDGE_ALLOW_NETS"), "{}", report.stdout);
        assert_eq!(report.egress[0].outcome, Outcome::RefusedAddress);
    }
}

engine_test! {
    /// Nothing leaves but through the proxy: no route for a raw connection,
    /// no UDP, no DNS.
    fn there_is_no_route_without_the_proxy() {
        let service = service(allowed());
        let report = run(&service, r#"
import socket
def attempt(what, action):
    try:
        action()
        print(what, "WORKED")
    except OSError as error:
        print(what, "failed:", type(error).__name__, error.errno)
attempt("tcp", lambda: socket.create_connection(("1.1.1.1", 80), timeout=3))
attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53)))
attempt("dns", lambda: socket.getaddrinfo("example.org", 443))
attempt("tcp6", lambda: socket.create_connection(("2606:4700:4700::1111", 80), timeout=3))
"#);
        assert_success(&report);
        assert!(!report.stdout.contains("WORKED"), "{}", report.stdout);
        for what in ["tcp ", "udp ", "dns ", "tcp6 "] {
            assert!(report.stdout.contains(&format!("{what}failed")), "{what}: {}", report.stdout);
        }
    }
}

engine_test! {
    /// Egress is off by default: a connection gets a refusal naming the
    /// variable that turns it on.
    fn egress_is_off_by_default() {
        let service = service(test_config());
        let report = run_on(&service.0, r#"
import urllib.request
try:
    urllib.request.urlopen("https://example.org/", timeout=10)
    print("FETCHED")
except Exception as error:
    print("refused |", error)
"#, Some(30.0));
        assert_success(&report);
        assert!(report.stdout.contains("egress is off: MCP_BRIDGE_ALLOW_HOSTS is empty"), "{}", report.stdout);
        assert!(report.notes.iter().any(|n| n.contains("MCP_BRIDGE_ALLOW_HOSTS")), "{:?}", report.notes);
    }
}

engine_test! {
    /// The run's byte bound cuts a download and says so; later connections
    /// are refused on it; the connection bounds refuse the one too many.
    fn the_runs_bounds_cut_and_refuse_with_the_variable_named() {
        let service = service(config_with(&servers().allow_hosts(), "127.0.0.0/8", |config| {
            config.egress.limits.bytes = 1 << 20;
            config.egress.limits.connections = 2;
        }));
        let report = run(&service, r#"
import urllib.request, threading, time
try:
    data = urllib.request.urlopen("{http}/bytes/5000000", timeout=10).read()
    print("downloaded", len(data))
except Exception as error:
    print("cut |", type(error).__name__)
try:
    urllib.request.urlopen("{http}/hello", timeout=10)
    print("FETCHED after the cut")
except Exception as error:
    print("after the cut |", error)
"#);
        assert_success(&report);
        assert!(!report.stdout.contains("downloaded 5000000"), "{}", report.stdout);
        assert!(report.stdout.contains("MCP_BRIDGE_EGRESS_BYTES"), "{}", report.stdout);
        assert!(report.egress.iter().any(|c| c.outcome == Outcome::Limit
            && c.reason.as_deref().is_some_and(|r| r.contains("MCP_BRIDGE_EGRESS_BYTES"))), "{:#?}", report.egress);
        let received: u64 = report.egress.iter().map(|c| c.bytes_received).sum();
        // Exact: each read takes its bytes from the bound before it reads.
        assert!(received <= 1 << 20, "{received} bytes got through");

        // Two connections held open: the third is refused.
        let report = run(&service, r#"
import urllib.request, threading, time
held = [urllib.request.urlopen("{http}/hold", timeout=10) for _ in range(2)]
try:
    urllib.request.urlopen("{http}/hello", timeout=10)
    print("FETCHED a third")
except Exception as error:
    print("third |", error)
"#);
        assert_success(&report);
        assert!(report.stdout.contains("MCP_BRIDGE_EGRESS_CONNECTIONS"), "{}", report.stdout);
    }
}

engine_test! {
    /// Hundreds of short connections one after another in one run (a new
    /// TLS connection each, closed by the client as the answer ends): every
    /// one is answered, and the agent keeps relaying.
    fn hundreds_of_short_connections_in_one_run() {
        let service = service(allowed());
        let report = run(&service, r#"
import ssl, urllib.request
context = ssl.create_default_context(cafile="/run/code/ca-bundle.pem")
opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
answered = 0
for _ in range(300):
    with opener.open("{https}/hello", timeout=10) as response:
        response.read(1)
        answered += 1
print(answered, "answered")
"#);
        assert_success(&report);
        assert_eq!(report.stdout, "300 answered\n");
    }
}

engine_test! {
    /// 50 downloads at once in one run all arrive whole.
    fn fifty_parallel_downloads_arrive_whole() {
        let service = service(allowed());
        let report = run(&service, r#"
import concurrent.futures, urllib.request
def get(i):
    return len(urllib.request.urlopen("{http}/bytes/%d" % (200_000 + i), timeout=30).read()) - i
with concurrent.futures.ThreadPoolExecutor(50) as pool:
    sizes = list(pool.map(get, range(50)))
print(sorted(set(sizes)))
"#);
        assert_success(&report);
        assert_eq!(report.stdout.trim(), "[200000]", "{report:#?}");
    }
}

engine_test! {
    /// A run that floods a tunnel and stdout at once still returns its
    /// output and ends at its deadline.
    fn a_flood_of_a_tunnel_and_stdout_ends_at_the_deadline() {
        let service = service(allowed());
        let servers = servers();
        let code = format!(r#"
import threading, urllib.request, sys
def download():  # in chunks: the flood is of the tunnel, not of memory
    while True:
        with urllib.request.urlopen("http://localhost:{}/bytes/50000000", timeout=30) as response:
            while response.read(1 << 16):
                pass
threading.Thread(target=download, daemon=True).start()
print("started", flush=True)
while True:
    sys.stdout.write("y" * 4096 + "\n")
"#, servers.http_port);
        let report = run_on(&service.0, &code, Some(3.0));
        assert_eq!(report.status, RunStatus::Timeout, "{:?}", report.error);
        assert!(report.stdout.starts_with("started"), "{}", &report.stdout[..100.min(report.stdout.len())]);
        // The output up to the cap (1 MiB) came back: the agent kept
        // draining stdout while the tunnel was flooding.
        assert!(report.stdout.len() >= 1 << 20, "{} bytes of stdout", report.stdout.len());
    }
}

engine_test! {
    /// A connection open when its run ends is closed (the server sees its
    /// client go), and the next run on that container has no connection of
    /// the last one.
    fn connections_end_with_their_run() {
        // Servers of its own: it counts their open responses.
        let servers = block_on(web::start(None));
        let mut config = config_for(&servers, &servers.allow_hosts(), "127.0.0.0/8", |_| {});
        let one = one_sandbox();
        (config.pool_max, config.max_sessions) = (one.pool_max, one.max_sessions);
        let service = service(config);
        let before = containers_of(&service.0);
        let code = format!(r#"
import threading, urllib.request, time
response = urllib.request.urlopen("http://localhost:{}/hold", timeout=10)
response.read(3)
def keep():
    while True:
        response.read(1)
threading.Thread(target=keep, daemon=True).start()
print("holding")
"#, servers.http_port);
        let report = run_on(&service.0, &code, Some(30.0));
        assert_success(&report);
        wait_until("the server sees the held connection close", Duration::from_secs(10), || {
            servers.open_responses() == 0
        });
        let report = run(&service, r#"
established = [line for path in ("/proc/net/tcp", "/proc/net/tcp6")
               for line in open(path).read().splitlines()[1:] if line.split()[3] == "01"]
print(len(established), "established")
"#);
        assert_success(&report);
        assert_eq!(report.stdout.trim(), "0 established");
        assert_eq!(containers_of(&service.0), before, "the same container served both runs");
    }
}

engine_test! {
    /// A session's calls are bounded and recorded one call at a time: a
    /// connection its thread holds at the end of a call is closed (the
    /// server sees it go), the next call of the session lists only its own
    /// connections and fetches again within a fresh bound.
    fn a_sessions_connections_end_with_each_call() {
        let servers = block_on(web::start(None));
        let config = config_for(&servers, &servers.allow_hosts(), "127.0.0.0/8", |config| {
            config.egress.limits.connections_total = 2;
        });
        let service = service(config);
        let in_session = |code: String| {
            block_on(call(&service.0, &CallRequest {
                code,
                session: Some("net".into()),
                timeout_secs: Some(30.0),
                ..CallRequest::default()
            }))
        };
        let first = in_session(format!(r#"
import threading, urllib.request
held = urllib.request.urlopen("http://localhost:{port}/hold", timeout=10)
held.read(3)
threading.Thread(target=lambda: [held.read(1) for _ in iter(int, 1)], daemon=True).start()
print(urllib.request.urlopen("http://localhost:{port}/hello").read().decode().strip())
"#, port = servers.http_port));
        assert_success(&first);
        assert_eq!(first.egress.len(), 2, "{:#?}", first.egress);
        wait_until("the server sees the session's held connection close", Duration::from_secs(10), || {
            servers.open_responses() == 0
        });
        let second = in_session(format!(r#"
import urllib.request
for _ in range(2):
    print(urllib.request.urlopen("http://localhost:{port}/hello").read().decode().strip())
try:
    urllib.request.urlopen("http://localhost:{port}/hello")
except OSError as error:
    print("third |", error)
"#, port = servers.http_port));
        assert_success(&second);
        assert_eq!(second.stdout.matches("hello from the test server").count(), 2, "{}", second.stdout);
        assert!(second.stdout.contains("MCP_BRIDGE_EGRESS_CONNECTIONS_TOTAL"), "{}", second.stdout);
        assert_eq!(second.egress.len(), 3, "only this call's: {:#?}", second.egress);
        assert_eq!(second.egress.iter().filter(|c| c.outcome == Outcome::Limit).count(), 1);
    }
}

engine_test! {
    /// The index the host's pip uses, reached as the host reaches it: the
    /// registry's names allowed, the host's CA bundle as the sandbox's trust
    /// (this machine's TLS to the registries is re-signed by a CA in it),
    /// and the registry's addresses allowed by network where they are in a
    /// range refused by default (here they resolve into 203.0.113.0/24, as
    /// an operator of such a network would allow them). Ordinary registry
    /// use: one small wheel.
    fn pip_reaches_the_hosts_own_index_with_the_hosts_trust() {
        let bundle: PathBuf = std::env::var_os("PIP_CERT")
            .map_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into(), PathBuf::from);
        let pem = std::fs::read_to_string(&bundle).expect("the host's CA bundle (PIP_CERT)");
        let mut config = test_config();
        let hosts = "pypi.org,files.pythonhosted.org";
        let nets: Vec<String> = hosts
            .split(',')
            .flat_map(|host| std::net::ToSocketAddrs::to_socket_addrs(&(host, 443)).unwrap())
            .map(|address| address.ip())
            .filter(|&ip| !Policy::default().address(ip))
            .map(|ip| format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }))
            .collect();
        config.egress.policy = Policy::parse(hosts, &nets.join(",")).unwrap();
        config.egress.ca_bundle = Some(CaBundle { path: bundle, pem });
        let service = service(config);
        // PyPI itself, not the host's package index pip is pointed at by default.
        let report = run_on(&service.0, r#"
import subprocess, sys, os
done = subprocess.run(
    [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
     "--index-url", "https://pypi.org/simple", "-d", "/tmp/wheels", "six==1.16.0"],
    capture_output=True, text=True)
print(done.returncode, os.listdir("/tmp/wheels") if os.path.isdir("/tmp/wheels") else [], done.stderr[-2000:])
"#, Some(110.0));
        assert_success(&report);
        assert!(report.stdout.starts_with("0 ['six-1.16.0-py2.py3-none-any.whl']"), "{report:#?}");
        assert!(report.egress.iter().any(|c| c.host == "files.pythonhosted.org" && c.outcome == Outcome::Allowed));
    }
}
