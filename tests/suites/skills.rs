//! Skills on the real engine: saved by a run, imported by later runs
//! (stateless and in a session), replaced and restored, deleted, refused
//! (bad names, too large, not compiling, the store full), two runs saving
//! one name at once, each principal's own; and through the built binary,
//! the MCP skills extension (`skills/list`, `skills/get`, `resources/read`
//! of `skill://` files, raw JSON-RPC: the official Python SDK 1.x has no
//! skills requests) and skills kept across a restart.

use std::process::Stdio;
use std::sync::Arc;

use mcp_code_exec::call::call;
use mcp_code_exec::principals::Principal;
use mcp_code_exec::report::{RunReport, RunStatus};
use mcp_code_exec::service::Service;
use serde_json::json;

use crate::util::server::Server;
use crate::util::{block_on, request, test_config, warmed};

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mcp-skills-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_as(service: &Service, principal: &str, code: &str) -> RunReport {
    let mut request = request(code, Some(60.0));
    request.principal = Principal::new(principal).unwrap();
    block_on(call(service, &request))
}

fn ok(service: &Service, principal: &str, code: &str) -> String {
    let report = run_as(service, principal, code);
    assert_eq!(report.status, RunStatus::Success, "{report:#?}");
    report.stdout
}

const SAVE: &str = r#"
code = '''
def total(rows):
    return sum(rows) * VERSION
VERSION = 1
'''
print(runtime.save_skill("load_sales", code, "Sums the sales rows.")["replaced"])
"#;

engine_test! {
    fn a_saved_skill_is_imported_by_later_runs_replaced_restored_and_deleted() {
        let dir = scratch("runs");
        let mut config = test_config();
        config.skills.dir = Some(dir.clone());
        config.skills.bytes = 1 << 20;
        let service = Arc::new(warmed(Service::new(config)));
        assert_eq!(ok(&service, "ann", SAVE), "False\n");
        // A new stateless run imports it, without any argument.
        let import = "from skills import load_sales\nprint(load_sales.total([1, 2]))";
        assert_eq!(ok(&service, "ann", import), "3\n");
        // What a run did with skills is listed with its tool calls (so in
        // its audit record too), refusals with the arguments they had.
        let listed = |report: &RunReport| -> Vec<(String, String, &'static str)> {
            let calls = report.tool_calls.as_ref().map_or(&[][..], |list| &list.calls[..]);
            calls.iter().map(|c| (c.server.clone(), c.tool.clone(), c.outcome)).collect()
        };
        let report = run_as(&service, "ann", import);
        let import_call = ("@skills".to_owned(), "import".to_owned(), "ok");
        assert!(listed(&report).contains(&import_call), "{report:#?}");
        let refused = run_as(&service, "ann", "runtime.restore_skill('never_saved')");
        assert_eq!(refused.status, RunStatus::Error, "{refused:#?}");
        assert_eq!(listed(&refused), [("@skills".to_owned(), "restore_skill".to_owned(), "error")]);
        let arguments = &refused.tool_calls.as_ref().unwrap().calls[0].arguments;
        assert!(arguments.contains("never_saved"), "{arguments}");
        // A skill's files: read by its own code and by runs, by a checked path.
        let with_files = r#"runtime.save_skill("lookup", "def first():\n    return skill_file('data/t.csv').decode().split()[1]\n", "Reads its table.", files={"data/t.csv": "a,b\n1,2\n"})"#;
        ok(&service, "ann", with_files);
        let uses = "from skills import lookup\nprint(lookup.first(), runtime.skill_file('lookup', 'data/t.csv'))";
        assert_eq!(ok(&service, "ann", uses), "1,2 b'a,b\\n1,2\\n'\n");
        for path in ["data/none.csv", "../load_sales/load_sales.py", "/etc/passwd", "data/../../x"] {
            let report = run_as(&service, "ann", &format!("runtime.skill_file('lookup', {path:?})"));
            assert_eq!(report.status, RunStatus::Error, "{path}: {report:#?}");
            assert!(report.stderr.contains("SkillError"), "{path}: {}", report.stderr);
        }
        let theirs = run_as(&service, "bob", "runtime.skill_file('lookup', 'data/t.csv')");
        assert!(theirs.stderr.contains("has no file"), "{}", theirs.stderr);
        ok(&service, "ann", "runtime.delete_skill('lookup')");
        let from = "from skills.load_sales import total\nprint(total([5]))";
        assert_eq!(ok(&service, "ann", from), "5\n");
        // In a session too.
        let mut session = request(import, Some(60.0));
        session.principal = Principal::new("ann").unwrap();
        session.session = Some("eda".into());
        let report = block_on(call(&service, &session));
        assert_eq!(report.stdout, "3\n", "{report:#?}");
        // Another principal has none of it.
        let theirs = run_as(&service, "bob", import);
        assert_eq!(theirs.status, RunStatus::Error);
        assert!(theirs.stderr.contains("ModuleNotFoundError: no skill 'load_sales'"), "{}", theirs.stderr);
        // Replaced, then the previous version restored.
        assert_eq!(ok(&service, "ann", &SAVE.replace("VERSION = 1", "VERSION = 10")), "True\n");
        assert_eq!(ok(&service, "ann", import), "30\n");
        ok(&service, "ann", "runtime.restore_skill('load_sales')");
        assert_eq!(ok(&service, "ann", import), "3\n");
        let listed = ok(&service, "ann", "print([s['name'] for s in runtime.list_skills()])");
        assert_eq!(listed, "['load_sales']\n");
        // Refusals, each a clear error in the run.
        for (code, says) in [
            ("runtime.save_skill('Bad', 'x = 1', 'd')", "is not a skill name"),
            ("runtime.save_skill('broken', 'def f(:', 'd')", "SyntaxError"),
            ("runtime.save_skill('big', 'x = 1', 'd', files={'data.bin': b'0' * (1 << 20)})", "at most 1048576 bytes"),
            ("runtime.save_skill('two_lines', 'x = 1', 'a\\nb')", "one line"),
            ("runtime.save_skill('huge', 'x = 1', 'd', files={'a.bin': b'0' * (2 << 20)})", "the skill call is"),
        ] {
            let report = run_as(&service, "ann", code);
            assert_eq!(report.status, RunStatus::Error, "{code}: {report:#?}");
            assert!(report.stderr.contains(says), "{code}: {}", report.stderr);
        }
        // The store's bound: 1 MiB here, ~700 KB in use after these.
        ok(&service, "ann", "runtime.save_skill('half', 'x = 1', 'd', files={'a.bin': b'1' * 700_000})");
        let read = "print(runtime.skill_file('half', 'a.bin') == b'1' * 700_000)";
        assert_eq!(ok(&service, "ann", read), "True\n", "a large file comes back whole");
        let full = run_as(&service, "ann", "runtime.save_skill('more', 'x = 1', 'd', files={'a.bin': b'1' * 700_000})");
        assert!(full.stderr.contains("MCP_BRIDGE_SKILLS_BYTES"), "{}", full.stderr);
        // Two runs saving one name at once: both succeed, one wins, the other is its previous.
        let racers: Vec<_> = (0..2)
            .map(|n| {
                let service = service.clone();
                crate::util::spawn(async move {
                    let mut request = request(
                        &format!("runtime.save_skill('racer', 'WHO = {n}', 'Who won.')"),
                        Some(60.0),
                    );
                    request.principal = Principal::new("ann").unwrap();
                    call(&service, &request).await.status
                })
            })
            .collect();
        for racer in racers {
            assert_eq!(block_on(racer).unwrap(), RunStatus::Success);
        }
        let who = ok(&service, "ann", "from skills import racer\nprint(racer.WHO)");
        ok(&service, "ann", "runtime.restore_skill('racer')");
        let other = ok(&service, "ann", "from skills import racer\nprint(racer.WHO)");
        assert_ne!(who, other, "the loser is the winner's previous version");
        ok(&service, "ann", "runtime.delete_skill('load_sales')");
        assert_eq!(run_as(&service, "ann", import).status, RunStatus::Error);
        // The session's sandbox goes with the service, on the runtime.
        block_on(service.shutdown());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

engine_test! {
    fn skills_are_served_as_mcp_skills_and_kept_across_a_restart() {
        let dir = scratch("mcp");
        let env = [("MCP_BRIDGE_SKILLS_DIR", dir.to_str().unwrap())];
        let mut server = Server::start(&env, Stdio::null());
        let saved = server.run_python(json!({"code": SAVE}));
        assert_eq!(saved["status"], "success", "{saved}");
        let listed = server.request("skills/list", json!({}));
        let skills = listed["result"]["skills"].as_array().unwrap_or_else(|| panic!("{listed}"));
        assert_eq!(skills.len(), 1, "{listed}");
        assert_eq!(skills[0]["uri"], "skill://load-sales/SKILL.md");
        assert_eq!(skills[0]["frontmatter"]["description"], "Sums the sales rows.");
        let got = server.request("skills/get", json!({"uri": "skill://load-sales/SKILL.md"}));
        assert_eq!(got["result"]["skill"]["frontmatter"]["name"], "load-sales", "{got}");
        let missing = server.request("skills/get", json!({"uri": "skill://nothing/SKILL.md"}));
        assert_eq!(missing["error"]["code"], -32602, "{missing}");
        let read = server.request("resources/read", json!({"uri": "skill://load-sales/load_sales.py"}));
        let text = read["result"]["contents"][0]["text"].as_str().unwrap_or_else(|| panic!("{read}"));
        assert!(text.contains("def total(rows):"), "{text}");
        let manual = server.request("resources/read", json!({"uri": "resource://mcp-code-exec/capabilities"}));
        let manual = manual["result"]["contents"][0]["text"].as_str().unwrap().to_owned();
        assert!(manual.contains("`skills.load_sales`: Sums the sales rows."), "{manual}");
        drop(server);
        // A new server, the same folder: the skill is still there.
        let mut again = Server::start(&env, Stdio::null());
        let imported = again.run_python(json!({"code": "from skills import load_sales\nprint(load_sales.total([2, 2]))"}));
        assert_eq!(imported["stdout"], "4\n", "{imported}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
