//! Packages: `packages=[…]` and `pip install` in a run, from the host's
//! wheel cache, filled from a real package index the test serves on the
//! host's loopback (real wheels: a pure one, one with a C extension for the
//! sandbox's Python), with egress off.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::util::web::{self, WebServers};
use crate::util::{block_on, test_config, warmed};
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::Config;
use mcp_code_exec::report::{RunReport, RunStatus};
use mcp_code_exec::service::Service;

/// A package index of its own (its downloads are counted), over a copy of
/// the wheels plus a project that has only a source distribution.
struct Index {
    servers: WebServers,
    _folder: TempDir,
}

/// A folder removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "mcp-code-exec-test-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn index() -> Index {
    let folder = TempDir::new("index");
    for entry in std::fs::read_dir(web::wheels()).expect("scripts/test.sh downloads the wheels") {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.0.join(entry.file_name())).unwrap();
    }
    std::fs::write(folder.0.join("onlysdist-1.0.tar.gz"), b"not built, ever").unwrap();
    let servers = block_on(web::start(Some(folder.0.clone())));
    Index {
        servers,
        _folder: folder,
    }
}

/// A warm service whose package index is `index`, with a cache of its own.
struct Running {
    service: Service,
    _cache: TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        block_on(self.service.shutdown());
    }
}

fn service(index: &Index, change: impl FnOnce(&mut Config)) -> Running {
    let cache = TempDir::new("cache");
    let mut config = test_config();
    config.packages.index = Some(format!(
        "http://127.0.0.1:{}/simple",
        index.servers.http_port
    ));
    config.packages.cache_dir = cache.0.clone();
    change(&mut config);
    Running {
        service: warmed(Service::new(config)),
        _cache: cache,
    }
}

fn run(service: &Running, packages: &[&str], code: &str) -> RunReport {
    run_in(service, None, packages, code)
}

fn run_in(service: &Running, session: Option<&str>, packages: &[&str], code: &str) -> RunReport {
    block_on(call(
        &service.service,
        &CallRequest {
            code: code.into(),
            packages: packages.iter().map(|p| (*p).to_owned()).collect(),
            session: session.map(str::to_owned),
            timeout_secs: Some(90.0),
            ..CallRequest::default()
        },
    ))
}

fn installed(report: &RunReport) -> Vec<(String, String)> {
    report
        .packages
        .as_ref()
        .map(|p| {
            p.installed
                .iter()
                .map(|p| (p.name.clone(), p.version.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_success(report: &RunReport) {
    assert_eq!(report.status, RunStatus::Success, "{report:#?}");
}

/// The wheels the cache holds; none of its temporaries may be left.
fn cached_wheels(dir: &Path) -> usize {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !names.iter().any(|n| n.starts_with('.')),
        "temporaries left: {names:?}"
    );
    names.iter().filter(|n| n.ends_with(".whl")).count()
}

engine_test! {
    /// A pure wheel, then a C extension (imported and used), then the same
    /// again in a new stateless run, served from the cache: the index sees
    /// no second download. A run without `packages` sees none of it.
    fn packages_install_from_the_hosts_cache_and_c_extensions_load() {
        let index = index();
        let service = service(&index, |_| {});
        let report = run(&service, &["tabulate==0.9.0"], "import tabulate\nprint(tabulate.tabulate([[1, 2]]))");
        assert_success(&report);
        assert!(report.stdout.contains("-  -\n1  2\n-  -"), "{}", report.stdout);
        assert_eq!(installed(&report), [("tabulate".to_owned(), "0.9.0".to_owned())]);
        let text = report.render(mcp_code_exec::config::OutputMode::Compact);
        assert!(text.contains("installed: tabulate 0.9.0 ("), "{text}");

        let code = "import markupsafe, markupsafe._speedups\nprint(markupsafe.escape('<b>'), markupsafe._speedups.__file__)";
        let report = run(&service, &["MarkupSafe"], code);
        assert_success(&report);
        assert!(report.stdout.starts_with("&lt;b&gt; /run/packages/"), "{}", report.stdout);
        let downloads = index.servers.downloads();
        assert_eq!(downloads, 2, "one download per wheel");
        assert_eq!(cached_wheels(&service._cache.0), 2);

        let again = run(&service, &["markupsafe", "tabulate"], code);
        assert_success(&again);
        assert_eq!(index.servers.downloads(), downloads, "served from the cache");
        assert_eq!(installed(&again).len(), 2);

        let plain = run(&service, &[], "import importlib.util as u\nprint(u.find_spec('tabulate'), u.find_spec('markupsafe'))");
        assert_success(&plain);
        assert_eq!(plain.stdout, "None None\n");
        assert!(plain.packages.is_none());
    }
}

engine_test! {
    /// `pip install` in the code installs from the same index, egress off,
    /// and the package imports in the same run.
    fn pip_install_in_the_code_uses_the_hosts_index() {
        let index = index();
        let service = service(&index, |_| {});
        let report = run(&service, &[], r#"
import subprocess, sys
done = subprocess.run([sys.executable, "-m", "pip", "install", "tabulate"], capture_output=True, text=True)
print(done.returncode, done.stderr[-500:])
import tabulate
print(tabulate.__version__, tabulate.__file__)
"#);
        assert_success(&report);
        assert!(report.stdout.starts_with("0 "), "{}", report.stdout);
        assert!(report.stdout.contains("0.9.0 /run/packages/lib/"), "{}", report.stdout);
    }
}

engine_test! {
    /// In a session, what call 1 installed imports in call 3 (call 2 adds
    /// another); a stateless call and another session never see it.
    fn a_sessions_packages_live_with_it_and_nowhere_else() {
        let index = index();
        let service = service(&index, |_| {});
        assert_success(&run_in(&service, Some("a"), &["tabulate"], "x = 1"));
        assert_success(&run_in(&service, Some("a"), &["six"], "import six"));
        let third = run_in(&service, Some("a"), &[], "import tabulate, six\nprint(tabulate.__version__, six.__version__)");
        assert_success(&third);
        assert_eq!(third.stdout, "0.9.0 1.16.0\n");
        let probe = "import importlib.util as u\nprint(u.find_spec('tabulate'))";
        let stateless = run(&service, &[], probe);
        assert_eq!(stateless.stdout, "None\n", "{stateless:#?}");
        let other = run_in(&service, Some("b"), &[], probe);
        assert_eq!(other.stdout, "None\n", "{other:#?}");
    }
}

engine_test! {
    /// Each failure is an `error` naming the package and why, before the
    /// code runs, and the pool stays healthy: a project the index does not
    /// have, one with only a source distribution, a version conflict, a
    /// package over `MCP_BRIDGE_PACKAGES_BYTES`; a requirement that is an
    /// option or a URL is refused before anything runs.
    fn failures_are_clear_errors_before_the_code_runs() {
        let index = index();
        let service = service(&index, |_| {});
        let marker = "print('THE CODE RAN')";
        for (packages, expected) in [
            (&["no-such-package-here"][..], "no project \"no-such-package-here\""),
            (&["onlysdist"][..], "only source distributions"),
            (&["tabulate==0.9.0", "tabulate==0.8.10"][..], "conflict"),
        ] {
            let report = run(&service, packages, marker);
            assert_eq!(report.status, RunStatus::Error, "{report:#?}");
            assert!(!report.stdout.contains("THE CODE RAN"), "{report:#?}");
            assert!(report.error.as_deref().unwrap_or("").contains(packages[0]), "{report:#?}");
            assert!(report.stderr.contains(expected), "{expected:?} missing: {}", report.stderr);
        }
        let refused = run(&service, &["--index-url=https://evil.example/simple"], marker);
        assert_eq!(refused.status, RunStatus::ValidationError, "{refused:#?}");
        assert_success(&run(&service, &[], "print(1)"));

        let small = service_small(&index);
        let report = run(&small, &["MarkupSafe", "tabulate"], marker);
        assert_eq!(report.status, RunStatus::Error, "{report:#?}");
        assert!(report.stderr.contains("MCP_BRIDGE_PACKAGES_BYTES"), "{}", report.stderr);
        assert_success(&run(&small, &[], "print(1)"));
    }
}

/// A package directory too small for two wheels.
fn service_small(index: &Index) -> Running {
    service(index, |config| config.packages.sandbox_bytes = 96 << 10)
}

engine_test! {
    /// What a run plants in the package directory (a fake module, a fake
    /// `.dist-info`, a `.pth`) is gone in the next run, and the cache is the
    /// index's: it takes nothing from a run (read only), serves a listed
    /// wheel only under its own name (never a copy under another), and the
    /// next install gets the real package.
    fn a_run_cannot_reach_the_next_run_or_the_cache_through_packages() {
        let index = index();
        let service = service(&index, |config| {
            config.pool_max = 1;
            config.max_sessions = 0;
        });
        assert_success(&run(&service, &["tabulate"], "import tabulate"));
        assert_eq!((index.servers.downloads(), cached_wheels(&service._cache.0)), (1, 1));
        let plant = run(&service, &[], r#"
import os, re, sys, urllib.request, urllib.error
site = [p for p in sys.path if p.startswith("/run/packages/")][0]
open(os.path.join(site, "tabulate.py"), "w").write("__version__ = 'planted'\n")
os.makedirs(os.path.join(site, "tabulate-9.9.dist-info"))
open(os.path.join(site, "tabulate-9.9.dist-info", "METADATA"), "w").write("Name: tabulate\nVersion: 9.9\n")
open(os.path.join(site, "planted.pth"), "w").write("import os; os.environ['PLANTED'] = '1'\n")
index = "http://packages.mcp-code-exec.invalid"
page = urllib.request.urlopen(index + "/simple/tabulate/").read().decode()
sha = re.search(r"/files/([0-9a-f]{64})/", page).group(1)
for method, name in [("GET", "tabulate-9.9-py3-none-any.whl"), ("PUT", "tabulate-0.9.0-py3-none-any.whl")]:
    request = urllib.request.Request(f"{index}/files/{sha}/{name}", data=b"evil" if method == "PUT" else None, method=method)
    try:
        urllib.request.urlopen(request)
        print(method, "| served")
    except urllib.error.HTTPError as error:
        print(method, "|", error.code)
"#);
        assert_success(&plant);
        assert!(plant.stdout.contains("GET | 404\nPUT | 405\n"), "{}", plant.stdout);
        assert_eq!((index.servers.downloads(), cached_wheels(&service._cache.0)), (1, 1));
        let next = run(&service, &[], "import importlib.util as u, subprocess, sys\nprint(u.find_spec('tabulate'))\n\
            print(subprocess.run([sys.executable, '-c', 'import os; print(os.environ.get(\"PLANTED\"))'], capture_output=True, text=True).stdout.strip())");
        assert_eq!(next.stdout, "None\nNone\n", "{next:#?}");
        let real = run(&service, &["tabulate"], "import tabulate\nprint(tabulate.__version__)");
        assert_success(&real);
        assert_eq!(real.stdout, "0.9.0\n");
    }
}

engine_test! {
    /// scripts/derive-image.sh bakes a requirements file into an image
    /// (offline, from the wheels folder): its sandboxes import the package
    /// with no install step and no index.
    fn the_derived_image_imports_its_packages_with_no_install() {
        let folder = TempDir::new("derive");
        let requirements = folder.0.join("requirements.txt");
        std::fs::write(&requirements, "# the team's stack\ntabulate==0.9.0\n").unwrap();
        let tag = format!("mcp-code-exec-sandbox:test-derived-{}", std::process::id());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/derive-image.sh");
        let built = std::process::Command::new(script)
            .arg("--packages-file")
            .arg(&requirements)
            .args(["--tag", &tag, "--find-links"])
            .arg(web::wheels())
            .output()
            .unwrap();
        assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
        let mut config = test_config();
        config.image = tag.clone();
        config.packages.index = Some("http://127.0.0.1:9/simple".into()); // nothing answers there
        let service = warmed(Service::new(config));
        let report = block_on(call(&service, &CallRequest {
            code: "import tabulate\nprint(tabulate.__version__)".into(),
            ..CallRequest::default()
        }));
        block_on(service.shutdown());
        let _ = std::process::Command::new("docker").args(["rmi", "-f", &tag]).output();
        assert_success(&report);
        assert_eq!(report.stdout, "0.9.0\n");

        // Options cannot ride along in the file.
        std::fs::write(&requirements, "--index-url https://evil.example/simple\ntabulate\n").unwrap();
        let refused = std::process::Command::new(script)
            .arg("--packages-file")
            .arg(&requirements)
            .args(["--tag", &tag])
            .output()
            .unwrap();
        assert_eq!(refused.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("names and versions only"));
    }
}

engine_test! {
    /// The package users ask for most: scikit-learn and the pure packages
    /// it needs come from the index, numpy and scipy stay the image's, and
    /// a model fits.
    fn scikit_learn_installs_over_the_images_stack_and_fits_a_model() {
        let index = index();
        // Room for pip, the 40 MB unpacked and the import (gVisor counts
        // its own kernel too): the tests' 256 MiB is not.
        let service = service(&index, |config| config.memory_bytes = 1 << 30);
        let report = run(&service, &["scikit-learn"], r#"
import numpy, sklearn
from sklearn.linear_model import LinearRegression
model = LinearRegression().fit(numpy.arange(10).reshape(-1, 1), 3 * numpy.arange(10) + 1)
print(sklearn.__version__, round(float(model.coef_[0]), 6), sklearn.__file__.startswith("/run/packages/"))
"#);
        assert_success(&report);
        assert_eq!(report.stdout, "1.9.1 3.0 True\n");
        let names: Vec<String> = installed(&report).into_iter().map(|(name, _)| name.to_lowercase()).collect();
        for expected in ["scikit-learn", "joblib", "cloudpickle", "threadpoolctl", "narwhals"] {
            assert!(names.iter().any(|n| n.replace('_', "-") == expected), "{expected} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n == "numpy" || n == "scipy"), "the image's own were installed again: {names:?}");
    }
}

engine_test! {
    /// The second install of the same requirements in a stateless run is
    /// the host's plan: the wheels pip chose the first time, unpacked
    /// without pip (so nothing is compiled to bytecode), as complete a
    /// distribution as pip's. A package directory that holds one already
    /// (a session's later call) is pip's again.
    fn a_set_installed_before_is_unpacked_from_the_plan_without_pip() {
        let index = index();
        let service = service(&index, |_| {});
        let code = "import importlib.metadata as m, os, tabulate\n\
            print(m.version('tabulate'), os.path.isdir(os.path.join(os.path.dirname(tabulate.__file__), '__pycache__')), \
            m.distribution('tabulate').read_text('INSTALLER').strip(), len(m.files('tabulate')) > 3)";
        let first = run(&service, &["tabulate==0.9.0"], code);
        assert_success(&first);
        assert_eq!(first.stdout, "0.9.0 True pip True\n", "pip compiles what it installs");
        let second = run(&service, &["tabulate == 0.9.0"], code);
        assert_success(&second);
        assert_eq!(second.stdout, "0.9.0 False pip True\n", "unpacked from the plan: {second:#?}");
        assert_eq!(installed(&second), [("tabulate".to_owned(), "0.9.0".to_owned())]);
        assert_eq!(index.servers.downloads(), 1);

        assert_success(&run_in(&service, Some("s"), &["six"], "import six"));
        let later = run_in(&service, Some("s"), &["tabulate==0.9.0"], code);
        assert_success(&later);
        assert_eq!(later.stdout, "0.9.0 True pip True\n", "pip, beside what the session has");
    }
}

engine_test! {
    /// A wheel whose bytes are not those its page's SHA-256 names is
    /// refused: a clear error, nothing cached; once the index serves the
    /// real file, the install works.
    fn a_wheel_that_does_not_match_its_hash_is_refused_and_not_cached() {
        let index = index();
        let wheel = std::fs::read_dir(&index._folder.0)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("six-"))
            .unwrap();
        let mut bytes = std::fs::read(&wheel).unwrap();
        bytes[100] ^= 0xff;
        let corrupt = wheel.with_extension("whl.corrupt");
        std::fs::write(&corrupt, bytes).unwrap();
        let service = service(&index, |_| {});
        let report = run(&service, &["six"], "print('THE CODE RAN')");
        assert_eq!(report.status, RunStatus::Error, "{report:#?}");
        assert!(!report.stdout.contains("THE CODE RAN"));
        assert!(report.stderr.contains("did not match the SHA-256"), "{}", report.stderr);
        assert!(index.servers.downloads() >= 1);
        assert_eq!(cached_wheels(&service._cache.0), 0, "nothing kept");
        std::fs::remove_file(corrupt).unwrap();
        let report = run(&service, &["six"], "import six\nprint(six.__version__)");
        assert_success(&report);
        assert_eq!(report.stdout, "1.16.0\n");
        assert_eq!(cached_wheels(&service._cache.0), 1);
    }
}

engine_test! {
    /// Past MCP_BRIDGE_PACKAGE_CACHE_BYTES the least recently used wheels
    /// leave the cache; the run that filled it succeeds, and an evicted
    /// wheel is fetched again when asked for.
    fn the_cache_evicts_the_least_recently_used_past_its_bound() {
        let index = index();
        // tabulate 35 KB, MarkupSafe 23 KB, six 11 KB, threadpoolctl 32 KB.
        let service = service(&index, |config| config.packages.cache_bytes = 100_000);
        for package in ["tabulate", "MarkupSafe", "six", "tabulate"] {
            assert_success(&run(&service, &[package], "pass"));
        }
        assert_eq!((index.servers.downloads(), cached_wheels(&service._cache.0)), (3, 3));
        assert_success(&run(&service, &["threadpoolctl"], "import threadpoolctl"));
        let names: Vec<String> = std::fs::read_dir(&service._cache.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(!names.iter().any(|n| n.contains("-MarkupSafe-")), "the least recently used went: {names:?}");
        assert!(names.iter().any(|n| n.contains("-tabulate-")), "{names:?}");
        let again = run(&service, &["MarkupSafe"], "import markupsafe._speedups");
        assert_success(&again);
        assert_eq!(index.servers.downloads(), 5, "fetched again");
    }
}

engine_test! {
    /// A run's requests to the index and the bytes it takes from it are
    /// bounded: over either, an error naming the variable, and the pool
    /// serves the next call.
    fn a_runs_use_of_the_index_is_bounded() {
        let index = index();
        for (change, variable) in [
            (Box::new(|c: &mut Config| c.packages.run_requests = 1) as Box<dyn FnOnce(&mut Config)>, "MCP_BRIDGE_PACKAGE_RUN_REQUESTS"),
            (Box::new(|c: &mut Config| c.packages.run_bytes = 20_000), "MCP_BRIDGE_PACKAGE_RUN_BYTES"),
        ] {
            let service = service(&index, change);
            let report = run(&service, &["tabulate"], "print('THE CODE RAN')");
            assert_eq!(report.status, RunStatus::Error, "{report:#?}");
            assert!(report.stderr.contains(variable), "{variable}: {}", report.stderr);
            assert_success(&run(&service, &[], "print(1)"));
        }
    }
}

engine_test! {
    /// Once, the index the host's pip uses (`pip config list`: its index,
    /// else PyPI, and its CA bundle), through a cache of the test's own: a
    /// small wheel installs from it. Needs the host's network: CI runs it
    /// in the Docker lane only, and it fails (never skips) when that index
    /// cannot be reached.
    fn the_index_the_hosts_pip_uses_fills_the_cache() {
        let cache = TempDir::new("host-index");
        let mut config = test_config();
        config.packages.index = None;
        config.packages.cache_dir = cache.0.clone();
        let service = Running { service: warmed(Service::new(config)), _cache: cache };
        let report = run(&service, &["six==1.16.0"], "import six\nprint(six.__version__, six.__file__.startswith('/run/packages/'))");
        assert!(
            report.status == RunStatus::Success,
            "the index the host's pip uses (see `python3 -m pip config list`) must be reachable from this host: {}\n{report:#?}",
            report.stderr
        );
        assert_eq!(report.stdout, "1.16.0 True\n");
        assert_eq!(cached_wheels(&service._cache.0), 1);
    }
}
