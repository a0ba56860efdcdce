//! The import order `src/lib.rs` states holds: every `crate::m` path in a top-level module's files
//! (test modules excepted) names a module on a lower floor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Floors from `src/lib.rs`'s doc: the lines after "Layers," up to the CLI, split at `→`.
fn floors(lib: &str) -> Vec<Vec<String>> {
    let doc: String =
        lib.lines().filter_map(|l| l.strip_prefix("//!")).skip_while(|l| !l.contains("Layers,")).skip(1).collect::<Vec<_>>().join(" ");
    let upto = doc.find("the CLI").expect("the layer line ends at the CLI");
    doc[..upto]
        .split('→')
        .map(|floor| floor.split('`').skip(1).step_by(2).map(str::to_string).collect::<Vec<_>>())
        .filter(|f| !f.is_empty())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The text without `#[cfg(test)] mod name { ... }` blocks and `//` comments.
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(brace) = after.find('{').filter(|&b| after[..b].contains("mod ")) else {
            out.push_str("#[cfg(test)]");
            rest = &after["#[cfg(test)]".len()..];
            continue;
        };
        let mut depth = 0;
        let mut end = after.len();
        for (k, c) in after[brace..].char_indices() {
            depth += match c {
                '{' => 1,
                '}' => -1,
                _ => 0,
            };
            if depth == 0 {
                end = brace + k + 1;
                break;
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Top-level modules named by `crate::m` paths and `use crate::{m, ...}` groups in `text`.
fn imported(text: &str) -> Vec<String> {
    let mut out = vec![];
    for (i, _) in text.match_indices("crate::") {
        let tail = &text[i + "crate::".len()..];
        if let Some(group) = tail.strip_prefix('{') {
            let body = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(body.split(',').map(|s| s.trim().split("::").next().unwrap_or("").to_string()));
        } else {
            out.push(tail.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    out.retain(|m| !m.is_empty() && m.chars().next().is_some_and(|c| c.is_lowercase()));
    out
}

#[test]
fn imports_run_down_the_stated_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let floors = floors(&std::fs::read_to_string(root.join("lib.rs")).unwrap());
    let floor_of: HashMap<&str, usize> = floors.iter().enumerate().flat_map(|(i, f)| f.iter().map(move |m| (m.as_str(), i))).collect();
    let mut files = vec![];
    rust_files(&root, &mut files);
    let mut top_modules = 0;
    let mut bad = vec![];
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_str().unwrap();
        let module = first.trim_end_matches(".rs");
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&floor) = floor_of.get(module) else {
            bad.push(format!("src/{module}: a module src/lib.rs's layer line does not name"));
            continue;
        };
        top_modules += 1;
        for m in imported(&without_tests(&std::fs::read_to_string(f).unwrap())) {
            if m == module {
                continue;
            }
            match floor_of.get(m.as_str()) {
                Some(&g) if g < floor => {}
                Some(_) => bad.push(format!("{} imports crate::{m}, not on a floor below `{module}`", rel.display())),
                None => bad.push(format!("{} imports crate::{m}, which the layer line does not name", rel.display())),
            }
        }
    }
    assert!(floors.len() >= 5 && top_modules > 50, "parsed {} floors over {top_modules} files: {floors:?}", floors.len());
    assert!(bad.is_empty(), "imports against the layers of src/lib.rs:\n{}", bad.join("\n"));
}

#[test]
fn the_check_sees_an_upward_import() {
    let text =
        "use crate::model::Llama;\n#[cfg(test)]\nmod tests {\n    use crate::bench::x;\n}\n// crate::seal\nfn f() { crate::{data, io}; }";
    assert_eq!(imported(&without_tests(text)), vec!["model", "data", "io"]);
    let lib = "//! Layers, bottom to top:\n//! `a`, `b` → `c` →\n//! `d` → the CLI\n";
    assert_eq!(floors(lib), vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
}
