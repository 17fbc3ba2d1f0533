//! `[cluster] runtime = "kubernetes"` and `sources`: refusals at their
//! line:col, and controls that the valid forms pass.

use std::path::Path;

use super::tests::src;
use crate::recipe::{parse, workloads::Runtime};

const HEAD: &str = "[image]\nname = \"t\"\nversion = \"1\"\n[base.debian]\n";

/// A Go module folder as the cluster stage needs it.
fn module(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["go.mod", "go.sum", "build.sh"] {
        std::fs::write(dir.join(f), "x").unwrap();
    }
}

fn refused(dir: &Path, text: &str, line: usize, col: usize, start: &str) {
    let e = match parse(&src(dir, text)) {
        Ok(_) => panic!("want a refusal, got ok:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(e.problems.len(), 1, "want one problem, got: {e}\n{text}");
    let p = &e.problems[0];
    assert_eq!((p.line, p.col), (line, col), "{p}\n{text}");
    assert!(p.message.starts_with(start), "got: {p}");
}

#[test]
fn explicit_sources_inside_the_root_are_taken() {
    let d = tempfile::tempdir().unwrap();
    module(&d.path().join("mod"));
    let r = parse(&src(
        d.path(),
        &format!("{HEAD}[cluster]\nruntime = \"kubernetes\"\nsources = \"mod\"\n"),
    ))
    .unwrap();
    assert_eq!(r.workloads.runtime, Runtime::Kubernetes);
    let k = r.workloads.kubernetes.unwrap();
    assert_eq!(
        k.module,
        std::fs::canonicalize(d.path().join("mod")).unwrap()
    );
    assert_eq!(k.node_name, "t");
}

#[test]
fn sources_without_a_module_are_refused() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("empty")).unwrap();
    refused(
        d.path(),
        &format!("{HEAD}[cluster]\nruntime = \"kubernetes\"\nsources = \"empty\"\n"),
        7,
        11,
        "[cluster] sources \"empty\"",
    );
}

#[test]
fn sources_outside_the_recipe_root_are_refused() {
    let d = tempfile::tempdir().unwrap();
    module(&d.path().join("cluster"));
    let inner = d.path().join("recipes");
    std::fs::create_dir(&inner).unwrap();
    refused(
        &inner,
        &format!("{HEAD}[cluster]\nruntime = \"kubernetes\"\nsources = \"../cluster\"\n"),
        7,
        11,
        "[cluster] sources path \"../cluster\" leaves the recipe root",
    );
}

#[test]
fn the_default_is_the_nearest_cluster_folder_above_the_recipe() {
    let d = tempfile::tempdir().unwrap();
    module(&d.path().join("cluster"));
    let inner = d.path().join("recipes");
    std::fs::create_dir(&inner).unwrap();
    let r = parse(&src(
        &inner,
        &format!("{HEAD}[cluster]\nruntime = \"kubernetes\"\n"),
    ))
    .unwrap();
    let k = r.workloads.kubernetes.unwrap();
    assert_eq!(
        k.module,
        std::fs::canonicalize(d.path()).unwrap().join("cluster")
    );
}

#[test]
fn without_any_module_the_runtime_line_is_named() {
    let d = tempfile::tempdir().unwrap();
    refused(
        d.path(),
        &format!("{HEAD}[cluster]\nruntime = \"kubernetes\"\n"),
        6,
        11,
        "runtime \"kubernetes\" needs the cluster Go module",
    );
}

#[test]
fn sources_for_another_runtime_are_refused() {
    let d = tempfile::tempdir().unwrap();
    module(&d.path().join("mod"));
    refused(
        d.path(),
        &format!("{HEAD}[cluster]\nruntime = \"containerd\"\nsources = \"mod\"\n"),
        7,
        11,
        "[cluster] sources is for runtime = \"kubernetes\" only",
    );
}

#[test]
fn an_unknown_runtime_lists_kubernetes() {
    let d = tempfile::tempdir().unwrap();
    refused(
        d.path(),
        &format!("{HEAD}[cluster]\nruntime = \"k8s\"\n"),
        6,
        11,
        "cluster runtime \"k8s\" is not one of \"none\", \"containerd\", \"k3s\", \"kubernetes\"",
    );
}

#[test]
fn a_kubernetes_service_is_probed_in_its_pod_and_never_on_the_host_network() {
    let d = tempfile::tempdir().unwrap();
    module(&d.path().join("cluster"));
    let svc = "[[images]]\nname = \"i\"\n[images.build]\npackages = []\nessential = true\n[[services]]\nname = \"s\"\nimage = \"i\"\nready = \"http:8080/healthz\"\n";
    let text = format!("{HEAD}[cluster]\nruntime = \"kubernetes\"\n{svc}");
    let r = parse(&src(d.path(), &text)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.workloads.services[0].ready.as_ref().unwrap().port, 8080);
    refused(
        d.path(),
        &format!("{text}host_network = true\n"),
        13,
        8,
        "service \"s\": host_network is not for runtime = \"kubernetes\"",
    );
}
