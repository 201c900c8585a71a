//! `kib conformance --profile cluster` offline, against recording **test stand-ins** for
//! `kind`, `kubectl`, `clusterctl`, `virtctl` and `curl` (one bash script, copied under each
//! name into a temp dir prepended to the spawned `kib`'s PATH only). They append their argv to
//! a log the tests read, answer every call with success (a `kubectl wait` included!) unless told
//! to fail at call N, and carry `KIB-TEST-STAND-IN`: kib refuses to run a marked tool unless
//! `KIB_TEST_STAND_IN_DIR` names the directory it was found in, which only these tests set
//! (`stray_stand_ins_are_refused` proves it). So they can never make a real check pass.
//!
//! Proven here: the order and arguments of every command, teardown (`kind delete cluster`)
//! after a failure at every call position, and that the report counts the waits (one check
//! per `kubectl wait`; `apply` and the other commands are not checks).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use kib_conformance::cluster::{self, ClusterSpec, STAND_IN_DIR_ENV, TOOLS};

const STAND_IN: &str = r##"#!/bin/bash
# KIB-TEST-STAND-IN: a recording stand-in written by kib's tests/cli/cluster.rs, not the real tool.
name=$(basename "$0")
dir=$(dirname "$0")
echo "test stand-in $name (kib tests/cli/cluster.rs)" >&2
if [ "$name" = virtctl ]; then
  # Runs in the background of the port-forward script: logged, never counted (its order
  # against the script's next call is not fixed), killed by the teardown through its pid file.
  printf '%s\n' "$name $*" >> "$dir/calls.log"
  exec sleep 300
fi
# stdin first: in `curl | sed | kubectl apply -f -` the kubectl call counts after curl's.
in=$(mktemp "$dir/in.XXXXXX")
cat > "$in"
n=$(( $(cat "$dir/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$dir/count"
mv "$in" "$dir/stdin.$n"
printf '%s\n' "$name $*" >> "$dir/calls.log"
if [ "$n" = "${STAND_IN_FAIL_AT:-0}" ]; then
  echo "test stand-in $name: failing call $n on purpose" >&2
  exit 1
fi
case "$name $*" in
  "curl "*) printf '            - name: CALICO_IPV4POOL_IPIP\n              value: "Always"\n' ;;
  "clusterctl get kubeconfig"*) echo "# test stand-in kubeconfig" ;;
  *" get machines "*) printf 'kib-wl-control-plane-x7k2p' ;;
esac
exit 0
"##;

/// A temp dir with the stand-ins, kib's temp dir (its cluster work dir) and the reports.
struct Bench {
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        for tool in TOOLS {
            let p = bin.join(tool);
            std::fs::write(&p, STAND_IN).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self { dir }
    }
    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.bin().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
    /// `kib conformance --profile cluster` with the stand-ins first on PATH.
    fn kib(&self, fail_at: Option<usize>, allow: bool) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kib"));
        cmd.args([
            "conformance",
            "--profile",
            "cluster",
            "--kubernetes-version",
            "v1.37.1",
            "--insecure-registry",
            "registry.example:5000",
            "--json",
        ])
        .arg(self.dir.path().join("report.json"))
        .arg("--junit")
        .arg(self.dir.path().join("report.xml"))
        .arg("registry.example:5000/kib/node:v1.37.1")
        .env("KIB_NO_PROGRESS", "1")
        .env("PATH", self.path_env())
        .env("TMPDIR", self.dir.path().join("tmp"))
        .env_remove("KUBECONFIG")
        .env_remove(STAND_IN_DIR_ENV);
        if allow {
            cmd.env(STAND_IN_DIR_ENV, self.bin());
        }
        if let Some(n) = fail_at {
            cmd.env("STAND_IN_FAIL_AT", n.to_string());
        }
        cmd.output().expect("run kib")
    }
    /// The calls, without the background virtctl.
    fn calls(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| !l.starts_with("virtctl "))
            .collect()
    }
    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.bin().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
    fn stdin(&self, n: usize) -> String {
        std::fs::read_to_string(self.bin().join(format!("stdin.{n}"))).unwrap()
    }
    fn report(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.path().join("report.json")).unwrap())
            .unwrap()
    }
    fn work_dir(&self) -> PathBuf {
        self.dir.path().join("tmp").join("kib-conformance-cluster")
    }
    /// The spec `kib` builds for these arguments (its temp dir is ours).
    fn spec(&self) -> ClusterSpec {
        let mut s = ClusterSpec::new("registry.example:5000/kib/node:v1.37.1", "v1.37.1");
        s.insecure_registries = vec!["registry.example:5000".into()];
        s.work_dir = self.work_dir();
        s
    }
}

/// Every call a passing run makes, in order, each with the plan step it belongs to.
fn expected_calls(b: &Bench) -> Vec<(usize, String)> {
    let spec = b.spec();
    let kcfg = cluster::workload_kubeconfig(&spec).display().to_string();
    let wl = cluster::workload_kubectl(&spec).join(" ");
    let mut out = Vec::new();
    for (i, step) in cluster::plan(&spec, None).iter().enumerate() {
        match step.what.as_str() {
            "get the workload kubeconfig" => {
                out.push((i, "clusterctl get kubeconfig kib-wl -n kib-wl".to_owned()));
            }
            "forward the workload API server" => {
                out.push((i, "kubectl -n kib-wl get machines -l cluster.x-k8s.io/control-plane -o jsonpath={.items[0].spec.infrastructureRef.name}".to_owned()));
                out.push((
                    i,
                    format!(
                        "kubectl --kubeconfig {kcfg} --server https://127.0.0.1:64443 --insecure-skip-tls-verify get --raw /readyz"
                    ),
                ));
            }
            "install the CNI (Calico)" => {
                out.push((
                    i,
                    format!(
                        "curl -fsSL --retry 3 {}",
                        cluster::calico_manifest_url(&spec)
                    ),
                ));
                out.push((i, format!("kubectl {wl} apply -f -")));
            }
            _ => {
                assert_ne!(step.program, "bash", "a new script step: {}", step.what);
                out.push((i, format!("{} {}", step.program, step.args.join(" "))));
            }
        }
    }
    out
}

const TEARDOWN: &str = "kind delete cluster --name kib-conformance";

fn checks(report: &serde_json::Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn wait_names(spec: &ClusterSpec) -> Vec<String> {
    cluster::plan(spec, None)
        .into_iter()
        .filter(|s| s.check)
        .map(|s| s.what)
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_passing_run_calls_every_tool_in_order_and_reports_one_check_per_wait() {
    let b = Bench::new();
    let out = b.kib(None, true);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let spec = b.spec();

    let mut want: Vec<String> = expected_calls(&b).into_iter().map(|(_, c)| c).collect();
    want.push(TEARDOWN.to_owned());
    assert_eq!(b.calls(), want);
    assert_eq!(b.calls()[0], "kind create cluster --wait 5m --config -");
    assert!(b.stdin(1).contains("kind: Cluster"), "{}", b.stdin(1));

    // The background virtctl ran once, against the control-plane VM the cluster reported, and
    // the teardown stopped it (its pid file is gone).
    let virtctl: Vec<String> = b
        .log()
        .into_iter()
        .filter(|l| l.starts_with("virtctl "))
        .collect();
    assert_eq!(
        virtctl,
        [
            "virtctl port-forward -n kib-wl --address 127.0.0.1 vm/kib-wl-control-plane-x7k2p 64443:6443"
        ]
    );
    assert!(!cluster::port_forward_pid(&spec).exists());

    // The DataVolume kib applied asks for room beyond the 20 GiB image (CDI's overhead).
    let dv_call = b
        .calls()
        .iter()
        .position(|c| c == "kubectl apply -f -")
        .unwrap();
    let dv = b.stdin(dv_call + 1);
    assert!(dv.contains("kind: DataVolume"), "{dv}");
    assert!(dv.contains("storage: 22Gi"), "{dv}");

    // One check per wait, all PASS; `apply`, `patch`, `clusterctl init`… are not checks.
    let report = b.report();
    let names = wait_names(&spec);
    assert_eq!(names.len(), 7);
    assert_eq!(
        checks(&report),
        names
            .iter()
            .map(|n| (n.clone(), "PASS".to_owned()))
            .collect::<Vec<_>>()
    );
    assert_eq!(report["counts"]["pass"], 7);
    assert_eq!(report["passed"], true);
    let junit = std::fs::read_to_string(b.dir.path().join("report.xml")).unwrap();
    assert_eq!(junit.matches("<testcase").count(), 7, "{junit}");
    assert!(!junit.contains("kubectl apply"), "{junit}");
    assert!(!junit.contains("install the KubeVirt operator"), "{junit}");
}

/// For every call position N (the background virtctl aside): the stand-in fails call N, and
/// the run still deletes the kind cluster last, reports exactly one FAIL (the wait of the step
/// that failed, or the next wait when a command failed), PASS before it, SKIP after it, and
/// exits 1. The one exception is the `/readyz` probe, which the port-forward script retries.
#[test]
fn teardown_follows_a_failure_at_every_position_and_the_failure_lands_on_its_wait() {
    let reference = Bench::new();
    let spec = reference.spec();
    let calls = expected_calls(&reference);
    let plan = cluster::plan(&spec, None);
    let names = wait_names(&spec);
    // The check that reports a failure of plan step i: step i itself if a wait, else the next.
    let check_of: BTreeMap<usize, usize> = (0..plan.len())
        .map(|i| {
            let w = (i..plan.len()).find(|&j| plan[j].check).unwrap();
            (i, names.iter().position(|n| *n == plan[w].what).unwrap())
        })
        .collect();
    let mut tried = 0;
    for (k, (step, _)) in calls.iter().enumerate() {
        let n = k + 1;
        let b = Bench::new();
        let out = b.kib(Some(n), true);
        let log = b.calls();
        // The same calls with this bench's paths.
        let calls = expected_calls(&b);
        let call = &calls[k].1;
        assert_eq!(
            log.last().map(String::as_str),
            Some(TEARDOWN),
            "call {n} ({call}): kind deleted last: {log:#?}"
        );
        assert_eq!(log[n - 1], *call, "call {n}");
        assert!(
            !cluster::port_forward_pid(&b.spec()).exists(),
            "call {n}: the port-forward was stopped"
        );
        let got = checks(&b.report());
        assert_eq!(
            got.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            names,
            "call {n}: the report lists the waits, and only them"
        );
        if call.ends_with("get --raw /readyz") {
            assert_eq!(out.status.code(), Some(0), "call {n}: {}", stderr(&out));
            assert_eq!(log[n], *call, "the probe was retried");
            tried += 1;
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "call {n}: {}", stderr(&out));
        // Nothing after the failing step ran (teardown aside); within the step, a pipeline
        // (`curl | sed | kubectl apply`) runs all its commands.
        let ran = &log[..log.len() - 1];
        assert!(ran.len() >= n, "call {n}: {ran:#?}");
        for (j, c) in ran[n..].iter().enumerate() {
            assert_eq!(
                calls[n + j].0,
                *step,
                "call {n}: stopped at the failing step: {ran:#?}"
            );
            assert_eq!(*c, calls[n + j].1);
        }
        let failed = check_of[step];
        for (i, (name, status)) in got.iter().enumerate() {
            let want = match i.cmp(&failed) {
                std::cmp::Ordering::Less => "PASS",
                std::cmp::Ordering::Equal => "FAIL",
                std::cmp::Ordering::Greater => "SKIP",
            };
            assert_eq!(status, want, "call {n} ({call}): check {name}");
        }
        let reason = b.report()["checks"][failed]["reason"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            reason.contains(&plan[*step].what),
            "call {n}: the FAIL names the step that failed: {reason}"
        );
        tried += 1;
    }
    assert_eq!(tried, calls.len());
    assert!(tried > 20, "every position: {tried}");
}

/// A stand-in found on PATH without the test's blessing (the variable unset, or naming
/// another directory) stops the run before any tool is called: the first check FAILs with a
/// hint, nothing is called, not even the teardown.
#[test]
fn stray_stand_ins_are_refused() {
    let b = Bench::new();
    let out = b.kib(None, false);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(b.log().is_empty(), "no stand-in ran: {:?}", b.log());
    let got = checks(&b.report());
    assert_eq!(got[0].1, "FAIL");
    assert!(got[1..].iter().all(|(_, s)| s == "SKIP"), "{got:?}");
    let reason = b.report()["checks"][0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("test stand-in"), "{reason}");
    assert!(reason.contains(&b.bin().display().to_string()), "{reason}");
    assert!(reason.contains("remove"), "{reason}");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kib"));
    let other = tempfile::tempdir().unwrap();
    let out = cmd
        .args([
            "conformance",
            "--profile",
            "cluster",
            "--kubernetes-version",
            "v1.37.1",
            "registry.example:5000/kib/node:v1.37.1",
        ])
        .env("KIB_NO_PROGRESS", "1")
        .env("PATH", b.path_env())
        .env("TMPDIR", b.dir.path().join("tmp"))
        .env(STAND_IN_DIR_ENV, other.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        b.log().is_empty(),
        "blessing another directory is no blessing"
    );
}

/// The stand-ins say what they are: every one prints the marker line on stderr and carries
/// it in its text.
#[test]
fn stand_ins_are_labelled() {
    let b = Bench::new();
    for tool in TOOLS {
        let text = std::fs::read_to_string(b.bin().join(tool)).unwrap();
        assert!(text.contains(cluster::STAND_IN_MARKER));
    }
    let out = Command::new(b.bin().join("kubectl"))
        .arg("version")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(stderr(&out).contains("test stand-in kubectl"));
}
