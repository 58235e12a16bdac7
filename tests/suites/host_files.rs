//! Host files (issue 20): runs read the user's files from the read roots
//! and save back beneath the write root, against the real engine and real
//! files; every escape from a root is refused before anything runs, every
//! refused save is a note, and nothing is half-written.

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::util::{Shared, block_on, spawn, started_service, test_config};
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::{Config, HostRead};
use mcp_code_exec::hostfiles::{HostRequest, Method, SaveRequest};
use mcp_code_exec::report::{RunReport, RunStatus};
use mcp_code_exec::service::Service;
use sha2::Digest;

/// The folders the suite's services read and write (made once per process).
struct Places {
    base: PathBuf,
    read: PathBuf,
    /// A second read root that is a symbolic link to a folder.
    linked_root: PathBuf,
    write: PathBuf,
}

fn places() -> &'static Places {
    static PLACES: OnceLock<Places> = OnceLock::new();
    PLACES.get_or_init(|| {
        let base =
            std::env::temp_dir().join(format!("mcp-code-exec-host-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let read = base.join("read");
        let write = base.join("write");
        let elsewhere = base.join("elsewhere");
        for dir in [&read, &write, &elsewhere] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(elsewhere.join("secret.txt"), "the secret").unwrap();
        let linked_root = base.join("linked-root");
        symlink(&elsewhere, &linked_root).unwrap();
        Places {
            base,
            read,
            linked_root,
            write,
        }
    })
}

/// The suite's configuration: both roots, 128 MiB of host files, a
/// workspace to hold them, 4 MiB of returned files.
fn host_config(method: Method) -> Config {
    let places = places();
    let mut config = test_config();
    config.host_read = HostRead::Folders(vec![places.read.clone(), places.linked_root.clone()]);
    config.host_write = Some(places.write.clone());
    config.max_host_files_bytes = 128 << 20;
    config.workspace_bytes = 192 << 20;
    config.memory_bytes = 512 << 20;
    config.max_output_files_bytes = 4 << 20;
    config.host_resolution = method;
    config
}

static SERVICE: Shared = Shared::with(|| Service::new(host_config(Method::Kernel)));

/// A fresh folder of the read root for one test, and its name there.
fn read_folder(test: &str) -> (PathBuf, String) {
    let dir = places().read.join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (dir, test.to_owned())
}

fn host(dest: &str, host: &str) -> HostRequest {
    HostRequest {
        dest: dest.into(),
        host: host.into(),
    }
}

fn reading(code: &str, files: Vec<HostRequest>) -> CallRequest {
    CallRequest {
        code: code.into(),
        timeout_secs: Some(60.0),
        host_files: files,
        ..CallRequest::default()
    }
}

fn run(service: &Service, request: &CallRequest) -> RunReport {
    block_on(call(service, request))
}

fn refused(service: &Service, files: Vec<HostRequest>) -> String {
    let report = run(service, &reading("print('ran')", files));
    assert_eq!(report.status, RunStatus::ValidationError, "{report:#?}");
    assert!(report.stdout.is_empty());
    report.error.unwrap()
}

engine_test! {
    fn a_file_and_a_tree_are_read_into_the_workspace() {
        let (dir, name) = read_folder("tree");
        std::fs::write(dir.join("sales.csv"), "region,amount\nnorth,3\n").unwrap();
        std::fs::create_dir_all(dir.join("data/deep/er")).unwrap();
        std::fs::create_dir_all(dir.join("data/empty")).unwrap();
        std::fs::write(dir.join("data/a.txt"), "a").unwrap();
        std::fs::write(dir.join("data/deep/er/b.bin"), [0u8, 255, 7]).unwrap();
        symlink("/etc/passwd", dir.join("data/passwd")).unwrap();
        let code = r#"
import os
print(open('sales.csv').read().splitlines()[1])
for top, dirs, files in sorted(os.walk('in')):
    print(top, sorted(dirs), sorted(files))
print(list(open('in/deep/er/b.bin', 'rb').read()))
"#;
        let report = run(
            SERVICE.get(),
            &reading(
                code,
                vec![
                    host("sales.csv", &format!("{name}/sales.csv")),
                    // Absolute, inside the root, with a trailing slash.
                    host("in", &format!("{}/", dir.join("data").display())),
                ],
            ),
        );
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(
            report.stdout,
            "north,3\nin ['deep', 'empty'] ['a.txt']\nin/deep ['er'] []\nin/deep/er [] ['b.bin']\n\
             in/empty [] []\n[0, 255, 7]\n"
        );
        assert!(
            report.notes.iter().any(|n| n.contains("in/passwd skipped: a symbolic link")),
            "{:?}",
            report.notes
        );
    }
}

engine_test! {
    /// 100 MiB, whole and exact (its SHA-256 on both sides), within the
    /// bound; a byte more than the bound refuses the call.
    fn a_100_mib_file_is_read_whole() {
        let (dir, name) = read_folder("large");
        let data: Vec<u8> = (0..100u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        std::fs::write(dir.join("big.bin"), &data).unwrap();
        let digest = hex::encode(sha2::Sha256::digest(&data));
        let code = "import hashlib, os\nprint(os.path.getsize('big.bin'), hashlib.sha256(open('big.bin', 'rb').read()).hexdigest())";
        let report = run(SERVICE.get(), &reading(code, vec![host("big.bin", &format!("{name}/big.bin"))]));
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(report.stdout, format!("{} {digest}\n", 100 << 20));
        std::fs::write(dir.join("more.bin"), vec![0u8; 28 << 20 | 1]).unwrap();
        let error = refused(SERVICE.get(), vec![host("in", &name)]);
        assert!(error.contains("MCP_BRIDGE_MAX_HOST_FILES_BYTES"), "{error}");
    }
}

/// Every way out of a root, each refused before the run with the path and
/// the variable named.
fn escapes_are_refused(service: &Service, test: &str) {
    let (dir, name) = read_folder(test);
    let places = places();
    std::fs::write(dir.join("ok.txt"), "ok").unwrap();
    symlink(
        places.base.join("elsewhere/secret.txt"),
        dir.join("out-link"),
    )
    .unwrap();
    symlink("../../elsewhere", dir.join("out-dir")).unwrap();
    symlink("loop", dir.join("loop")).unwrap();
    symlink("/dev/null", dir.join("null")).unwrap();
    std::fs::hard_link(places.base.join("elsewhere/secret.txt"), dir.join("hard")).unwrap();
    let fifo = dir.join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let device = dir.join("device");
    let made_device = std::process::Command::new("mknod")
        .arg(&device)
        .args(["c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success());
    let mut cases = vec![
        (format!("{name}/out-link"), "a symbolic link"),
        (
            format!("{name}/out-dir/secret.txt"),
            "links are not followed",
        ),
        (format!("{name}/loop"), "a symbolic link"),
        (format!("{name}/null"), "a symbolic link"),
        (format!("{name}/hard"), "hard links"),
        (format!("{name}/fifo"), "FIFO"),
        (
            format!("{name}/../../elsewhere/secret.txt"),
            "outside every read root",
        ),
        (
            format!("{}/../elsewhere/secret.txt", places.read.display()),
            "outside every read root",
        ),
        (
            places
                .base
                .join("elsewhere/secret.txt")
                .display()
                .to_string(),
            "outside every read root",
        ),
        ("/etc/passwd".to_owned(), "outside every read root"),
        (format!("{name}/missing.txt"), "no such file"),
        // A root that is itself a symbolic link is not opened.
        (
            places.linked_root.join("secret.txt").display().to_string(),
            "a symbolic link or no folder",
        ),
    ];
    if made_device {
        cases.push((format!("{name}/device"), "FIFO, device or socket"));
    } else {
        eprintln!("(not root: no character device made; /dev/null is reached only through a link)");
    }
    for (path, why) in cases {
        let error = refused(service, vec![host("x", &path)]);
        assert!(
            error.contains(&format!("{path:?}"))
                && error.contains(why)
                && error.contains("MCP_BRIDGE_HOST_READ"),
            "{path}: {error}"
        );
    }
    // In a folder, the same entries are skipped, each with a note, and the
    // rest is read.
    let report = run(
        service,
        &reading(
            "import os\nprint(sorted(os.listdir('d')))",
            vec![host("d", &name)],
        ),
    );
    assert_eq!(report.status, RunStatus::Success, "{report:#?}");
    assert_eq!(report.stdout, "['ok.txt']\n");
    let expected = if made_device { 7 } else { 6 };
    assert_eq!(report.notes.len(), expected, "{:?}", report.notes);
}

engine_test! {
    fn escapes_are_refused_through_openat2() {
        escapes_are_refused(SERVICE.get(), "escapes-kernel");
    }
}

engine_test! {
    /// The component-by-component walk (what runs where the kernel has no
    /// openat2) refuses the same.
    fn escapes_are_refused_through_the_walk() {
        let mut config = host_config(Method::Walk);
        config.pool_max = 1;
        config.max_sessions = 0;
        escapes_are_refused(&started_service(config), "escapes-walk");
    }
}

fn saving(code: &str, saves: &[(&str, &str)], overwrite: bool) -> CallRequest {
    CallRequest {
        code: code.into(),
        timeout_secs: Some(30.0),
        save: saves
            .iter()
            .map(|(from, to)| SaveRequest {
                from: (*from).into(),
                to: (*to).into(),
            })
            .collect(),
        overwrite,
        ..CallRequest::default()
    }
}

const WRITE_CLEAN: &str =
    "import os\nos.makedirs('out', exist_ok=True)\nopen('out/clean.csv', 'w').write(CONTENT)";

fn write_clean(content: &str) -> String {
    format!("CONTENT = {content:?}\n{WRITE_CLEAN}")
}

engine_test! {
    /// Saved whole, with its size; an existing file is not replaced unless
    /// the call says overwrite; folders on the way are made.
    fn a_save_writes_once_and_overwrites_only_when_asked() {
        let write = &places().write;
        let _ = std::fs::remove_dir_all(write.join("save"));
        let target = write.join("save/data/clean.csv");
        let first = run(SERVICE.get(), &saving(&write_clean("a,b\n1,2\n"), &[("out/clean.csv", "save/data/clean.csv")], false));
        assert_eq!(first.status, RunStatus::Success, "{first:#?}");
        assert_eq!(first.saved.len(), 1, "{first:#?}");
        assert_eq!(first.saved[0].bytes, 8);
        assert_eq!(first.saved[0].to, target.display().to_string());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "a,b\n1,2\n");
        let again = run(SERVICE.get(), &saving(&write_clean("new\n"), &[("out/clean.csv", "save/data/clean.csv")], false));
        assert!(again.saved.is_empty(), "{again:#?}");
        assert!(again.notes.iter().any(|n| n.contains("exists and was not replaced")), "{:?}", again.notes);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "a,b\n1,2\n");
        let absolute = target.display().to_string();
        let forced = run(SERVICE.get(), &saving(&write_clean("new\n"), &[("out/clean.csv", &absolute)], true));
        assert_eq!(forced.saved.len(), 1, "{forced:#?}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new\n");
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(target.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["clean.csv"]);
        // A failed run saves nothing.
        let failed = run(SERVICE.get(), &saving(&format!("{}\nraise SystemExit(1)", write_clean("x")), &[("out/clean.csv", "save/failed.csv")], false));
        assert!(failed.saved.is_empty() && failed.notes.iter().any(|n| n.contains("nothing saved")), "{failed:#?}");
        assert!(!write.join("save/failed.csv").exists());
    }
}

engine_test! {
    /// Outside the write root: refused before the run, nothing written.
    fn a_save_outside_the_write_root_is_refused() {
        let outside = places().base.join("elsewhere/planted.csv");
        let link = places().write.join("link-out");
        let _ = std::fs::remove_file(&link);
        symlink(places().base.join("elsewhere"), &link).unwrap();
        for to in ["../elsewhere/planted.csv", outside.to_str().unwrap(), "a/../../x", "/etc/x"] {
            let report = run(SERVICE.get(), &saving(&write_clean("x"), &[("out/clean.csv", to)], true));
            assert_eq!(report.status, RunStatus::ValidationError, "{report:#?}");
            let error = report.error.unwrap();
            assert!(error.contains(&format!("{to:?}")) && error.contains("MCP_BRIDGE_HOST_WRITE"), "{error}");
        }
        for from in ["clean.csv", "out/../x", "out/"] {
            let report = run(SERVICE.get(), &saving(&write_clean("x"), &[(from, "x.csv")], true));
            assert_eq!(report.status, RunStatus::ValidationError, "{from}: {report:#?}");
        }
        // Through a link inside the root: refused at the save, in a note.
        let report = run(SERVICE.get(), &saving(&write_clean("x"), &[("out/clean.csv", "link-out/planted.csv")], true));
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert!(report.saved.is_empty());
        assert!(report.notes.iter().any(|n| n.contains("links are not followed")), "{:?}", report.notes);
        assert!(!outside.exists());
    }
}

engine_test! {
    /// A link or a FIFO in out/, or a file over the bound of returned files:
    /// not saved, each told in a note naming it.
    fn a_save_of_a_link_a_fifo_or_a_file_over_the_bound_is_refused() {
        let code = r#"
import os
os.makedirs('out', exist_ok=True)
os.symlink('/etc/passwd', 'out/passwd')
os.mkfifo('out/fifo')
open('out/big.bin', 'wb').write(b'x' * (5 << 20))
"#;
        let report = run(
            SERVICE.get(),
            &saving(code, &[("out/passwd", "refused/passwd"), ("out/fifo", "refused/fifo"), ("out/big.bin", "refused/big.bin")], false),
        );
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert!(report.saved.is_empty(), "{report:#?}");
        for name in ["out/passwd", "out/fifo", "out/big.bin"] {
            assert!(
                report.notes.iter().any(|n| n.starts_with(&format!("{name} not saved")) && n.contains("MCP_BRIDGE_MAX_OUTPUT_FILES_BYTES")),
                "{name}: {:?}",
                report.notes
            );
        }
        assert!(!places().write.join("refused").exists());
    }
}

engine_test! {
    /// Two runs at once saving the same path: one wins, whole; the other
    /// is told.
    fn two_concurrent_saves_of_one_path_one_wins_whole() {
        let _ = std::fs::remove_file(places().write.join("race.bin"));
        let service = SERVICE.get();
        let runs: Vec<_> = ["a", "b"]
            .iter()
            .map(|letter| {
                let code = format!("import os\nos.makedirs('out', exist_ok=True)\nopen('out/r.bin', 'w').write({letter:?} * (3 << 20))");
                let request = saving(&code, &[("out/r.bin", "race.bin")], false);
                spawn(async move { call(service, &request).await })
            })
            .collect();
        let reports: Vec<RunReport> = runs.into_iter().map(|run| block_on(run).unwrap()).collect();
        let winners = reports.iter().filter(|r| r.saved.len() == 1).count();
        assert_eq!(winners, 1, "{reports:#?}");
        let loser = reports.iter().find(|r| r.saved.is_empty()).unwrap();
        assert!(loser.notes.iter().any(|n| n.contains("exists and was not replaced")), "{:?}", loser.notes);
        let saved = std::fs::read(places().write.join("race.bin")).unwrap();
        assert_eq!(saved.len(), 3 << 20);
        assert!(saved.iter().all(|&b| b == saved[0]), "one run's bytes, whole");
    }
}

engine_test! {
    /// In a session every call reads and saves: a later call saves a file
    /// an earlier one wrote (unchanged since), and reads a host file anew.
    fn a_sessions_calls_each_read_and_save() {
        let (dir, name) = read_folder("session");
        std::fs::write(dir.join("n.txt"), "1").unwrap();
        let _ = std::fs::remove_dir_all(places().write.join("session"));
        let mut first = saving(&write_clean("kept"), &[("out/clean.csv", "session/first.csv")], false);
        first.session = Some("host-files".into());
        first.host_files = vec![host("n.txt", &format!("{name}/n.txt"))];
        // A pause after the write: the agent then trusts the file unchanged
        // at the next call, which must send it for the save all the same.
        first.code.push_str("\nimport time\ntime.sleep(0.2)\nprint(open('n.txt').read())");
        let report = run(SERVICE.get(), &first);
        assert_eq!((report.status, report.stdout.as_str()), (RunStatus::Success, "1\n"), "{report:#?}");
        assert_eq!(report.saved.len(), 1);
        std::fs::write(dir.join("n.txt"), "2").unwrap();
        let mut second = saving("print(open('n.txt').read())", &[("out/clean.csv", "session/second.csv")], false);
        second.session = Some("host-files".into());
        second.host_files = vec![host("n.txt", &format!("{name}/n.txt"))];
        second.end_session = true;
        let report = run(SERVICE.get(), &second);
        assert_eq!((report.status, report.stdout.as_str()), (RunStatus::Success, "2\n"), "{report:#?}");
        assert_eq!(report.saved.len(), 1, "{report:#?}");
        assert_eq!(std::fs::read_to_string(places().write.join("session/second.csv")).unwrap(), "kept");
    }
}

engine_test! {
    /// Without roots, host paths and saves are refused, naming the variable.
    fn without_roots_nothing_is_read_or_saved() {
        let service = crate::util::warmed(Service::new({
            let mut config = test_config();
            config.pool_max = 1;
            config.max_sessions = 0;
            config
        }));
        let error = refused(&service, vec![host("x", "/etc/passwd")]);
        assert!(error.contains("MCP_BRIDGE_HOST_READ"), "{error}");
        let report = run(&service, &saving("print(1)", &[("out/x", "x")], false));
        assert_eq!(report.status, RunStatus::ValidationError);
        assert!(report.error.unwrap().contains("MCP_BRIDGE_HOST_WRITE"));
    }
}
