//! Plans: the exact wheels a set of requirements resolved to, remembered so
//! that the next install of the same set needs no pip in the sandbox.
//!
//! Owns the rule for what may be remembered. pip in a stateless run
//! resolves the requirements against this index and says which wheels it
//! chose; that is the sandbox's word, so it is kept only as a choice among
//! the host's own facts: every wheel is one this index served to that very
//! run, is in the cache under the name its page listed, and is the only
//! wheel of its project; every project asked for is among them, at the
//! version pinned when the entry pins one (`==`); they fit the sandbox's
//! package directory. Names and versions come from the files' names, not
//! from the sandbox. A plan lasts as long as a page ([`super::PAGE_TTL`]:
//! a newer release is picked up then) and only while all its wheels are
//! still listed and cached. It touches no file and no network.

use std::sync::Arc;
use std::time::Instant;

use super::{PAGE_TTL, State, cached_name, plain_file_request, requirement};
use crate::sandbox::protocol::{ChosenWheel, PlannedWheel};

/// Plans kept at most (the oldest go first).
const MAX_PLANS: usize = 1024;
/// Wheels one plan names at most.
const MAX_PLAN_WHEELS: usize = 256;

#[derive(Debug)]
pub(super) struct Plan {
    made: Instant,
    wheels: Arc<[PlannedWheel]>,
}

/// What a plan is remembered under: the sandbox image and the requirement
/// entries, each without blanks and in lower case, sorted.
pub(super) fn key(image: &str, requirements: &[String]) -> String {
    let mut entries: Vec<String> = requirements
        .iter()
        .map(|entry| {
            entry
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase()
        })
        .collect();
    entries.sort();
    entries.dedup();
    format!("{image}\n{}", entries.join("\n"))
}

impl State {
    /// The wheels of a fresh plan whose files are all still listed and
    /// cached; empty when there is none.
    pub(super) fn plan(&self, key: &str) -> Arc<[PlannedWheel]> {
        let Some(plan) = self.plans.get(key) else {
            return Arc::from([]);
        };
        let usable = plan.made.elapsed() < PAGE_TTL
            && plan.wheels.iter().all(|wheel| {
                self.files
                    .get(&wheel.sha256)
                    .is_some_and(|listed| listed.filename == wheel.filename)
                    && self
                        .cached
                        .contains_key(&cached_name(&wheel.sha256, &wheel.filename))
            });
        if usable {
            plan.wheels.clone()
        } else {
            Arc::from([])
        }
    }

    /// Remembers what pip chose for `requirements` in a stateless run that
    /// was `served` these paths of the index; why not, when it is refused.
    pub(super) fn remember(
        &mut self,
        key: String,
        requirements: &[String],
        chosen: &[ChosenWheel],
        served: &[String],
        max_bytes: u64,
    ) -> Result<(), String> {
        if chosen.is_empty() || chosen.len() > MAX_PLAN_WHEELS {
            return Err(format!("{} wheels", chosen.len()));
        }
        let mut wheels = Vec::with_capacity(chosen.len());
        let mut bytes: u64 = 0;
        for wheel in chosen {
            let path = format!("/files/{}/{}", wheel.sha256, wheel.filename);
            if !plain_file_request(&wheel.sha256, &wheel.filename) || !served.contains(&path) {
                return Err(format!("{} was not served to the run", wheel.filename));
            }
            let listed = self
                .files
                .get(&wheel.sha256)
                .filter(|listed| listed.filename == wheel.filename);
            let cached = listed.and_then(|_| {
                self.cached
                    .get(&cached_name(&wheel.sha256, &wheel.filename))
            });
            let Some((size, _)) = cached else {
                return Err(format!("{} is not in the cache", wheel.filename));
            };
            bytes += size;
            let mut parts = wheel.filename.split('-');
            let (Some(name), Some(version)) = (parts.next(), parts.next()) else {
                return Err(format!("{} is not a wheel's name", wheel.filename));
            };
            wheels.push(PlannedWheel {
                filename: wheel.filename.clone(),
                sha256: wheel.sha256.clone(),
                name: name.replace('_', "-"),
                version: version.to_owned(),
            });
        }
        if bytes > max_bytes {
            return Err("larger than the package directory".into());
        }
        let projects: Vec<(String, String)> = wheels
            .iter()
            .map(|wheel| {
                let project = requirement::normalized(&wheel.name).unwrap_or_default();
                (project, wheel.version.to_ascii_lowercase())
            })
            .collect();
        for (i, (project, _)) in projects.iter().enumerate() {
            if projects[..i].iter().any(|(other, _)| other == project) {
                return Err(format!("two wheels of {project}"));
            }
        }
        for entry in requirements {
            let (project, pin) =
                requirement::project_and_pin(entry).ok_or_else(|| format!("{entry:?}"))?;
            match projects.iter().find(|(name, _)| *name == project) {
                None => return Err(format!("{project} is not among the wheels")),
                Some((_, version)) if pin.as_ref().is_some_and(|pin| pin != version) => {
                    return Err(format!("{project} {version} is not the version pinned"));
                }
                Some(_) => {}
            }
        }
        if !self.plans.contains_key(&key) && self.plans.len() >= MAX_PLANS {
            let oldest = self
                .plans
                .iter()
                .min_by_key(|(_, plan)| plan.made)
                .map(|(key, _)| key.clone())
                .expect("not empty");
            self.plans.remove(&oldest);
        }
        self.plans.insert(
            key,
            Plan {
                made: Instant::now(),
                wheels: wheels.into(),
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::upstream::UpstreamFile;
    use std::time::SystemTime;

    const SIX: &str = "six-1.16.0-py2.py3-none-any.whl";
    const TAB: &str = "tabulate-0.9.0-py3-none-any.whl";

    fn sha(i: u8) -> String {
        format!("{i:064x}")
    }

    /// A state whose index listed and cached both wheels.
    fn state() -> State {
        let mut state = State::default();
        for (i, name) in [(1, SIX), (2, TAB)] {
            state.files.insert(
                sha(i),
                UpstreamFile {
                    filename: name.into(),
                    url: reqwest::Url::parse("https://index.example/f.whl").unwrap(),
                    sha256: sha(i),
                    requires_python: None,
                    yanked: false,
                },
            );
            state
                .cached
                .insert(cached_name(&sha(i), name), (1000, SystemTime::now()));
        }
        state
    }

    fn chosen(list: &[(u8, &str)]) -> Vec<ChosenWheel> {
        list.iter()
            .map(|(i, name)| ChosenWheel {
                filename: (*name).into(),
                sha256: sha(*i),
            })
            .collect()
    }

    fn served(list: &[(u8, &str)]) -> Vec<String> {
        list.iter()
            .map(|(i, name)| format!("/files/{}/{name}", sha(*i)))
            .collect()
    }

    fn reqs(list: &[&str]) -> Vec<String> {
        list.iter().map(|r| (*r).to_owned()).collect()
    }

    #[test]
    fn a_choice_the_host_served_is_planned_and_named_from_its_files() {
        let mut state = state();
        let both = [(1, SIX), (2, TAB)];
        let key = key("img", &reqs(&["Tabulate == 0.9.0", "six"]));
        state
            .remember(
                key.clone(),
                &reqs(&["tabulate==0.9.0", "six"]),
                &chosen(&both),
                &served(&both),
                1 << 20,
            )
            .unwrap();
        let plan = state.plan(&key);
        assert_eq!(plan.len(), 2);
        assert_eq!(
            (plan[1].name.as_str(), plan[1].version.as_str()),
            ("tabulate", "0.9.0")
        );
        assert_eq!(key, super::key("img", &reqs(&["six", "tabulate==0.9.0"])));
        assert!(
            state
                .plan(&super::key(
                    "other-image",
                    &reqs(&["six", "tabulate==0.9.0"])
                ))
                .is_empty()
        );
        // Evicted from the cache: no plan.
        state.cached.remove(&cached_name(&sha(1), SIX));
        assert!(state.plan(&key).is_empty());
    }

    #[test]
    fn the_sandboxs_word_is_refused_where_the_hosts_facts_do_not_bear_it_out() {
        let mut state = state();
        let both = [(1, SIX), (2, TAB)];
        type Case<'a> = (&'a [&'a str], Vec<ChosenWheel>, Vec<String>, u64, &'a str);
        let cases: [Case; 6] = [
            (
                &["six"],
                chosen(&[(1, SIX)]),
                served(&[(2, TAB)]),
                1 << 20,
                "not served",
            ),
            (
                &["six"],
                chosen(&[(2, SIX)]),
                served(&[(2, SIX)]),
                1 << 20,
                "not in the cache",
            ),
            (
                &["six"],
                chosen(&[(1, SIX), (1, SIX)]),
                served(&both),
                1 << 20,
                "two wheels",
            ),
            (
                &["six", "numpy"],
                chosen(&[(1, SIX)]),
                served(&both),
                1 << 20,
                "numpy is not among",
            ),
            (
                &["six==1.15"],
                chosen(&[(1, SIX)]),
                served(&both),
                1 << 20,
                "not the version pinned",
            ),
            (&["six"], chosen(&both), served(&both), 1500, "larger than"),
        ];
        for (requirements, chosen, served, max, why) in cases {
            let key = key("img", &reqs(requirements));
            let error = state
                .remember(key.clone(), &reqs(requirements), &chosen, &served, max)
                .unwrap_err();
            assert!(error.contains(why), "{why:?}: {error}");
            assert!(state.plan(&key).is_empty());
        }
        assert!(
            state
                .remember("k".into(), &reqs(&["six"]), &[], &[], 1 << 20)
                .is_err()
        );
    }
}
