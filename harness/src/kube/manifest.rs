//! Kubernetes manifests as users write them for `kubectl apply`: YAML text of one or more
//! documents, each one object, checked before anything boots (with the document and line of a
//! mistake) and applied by server-side apply, as scenario files and users' own tests do.
//!
//! # Usage
//! ```
//! use harness::kube::manifest::parse_manifests;
//!
//! let docs = parse_manifests("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n", "demo.yaml").unwrap();
//! assert_eq!(docs[0].name, "demo");
//! assert_eq!(docs[0].namespace(None).unwrap(), "default");
//! ```
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{GroupVersionKind, TypeMeta};
use kube::discovery::{pinned_kind, Scope};
use kube::Client;

/// One document of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// 1-based, in the text.
    pub document: usize,
    /// The line its document starts on, in the manifest text.
    pub line: usize,
    /// `apiVersion` and `kind`.
    pub type_meta: TypeMeta,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` as written.
    pub written_namespace: Option<String>,
    /// The whole object, as sent to the apiserver.
    pub body: serde_json::Value,
}

/// Why a manifest was refused. `origin` is the manifest's path as the scenario file writes it,
/// or "inline manifest".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    /// A document is not YAML, or not an object with `apiVersion`, `kind` and `metadata.name`.
    #[error("{origin}: document {document} (line {line}): {message}")]
    Invalid {
        /// The manifest.
        origin: String,
        /// Which document, from 1.
        document: usize,
        /// The line it starts on.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The manifest holds no object.
    #[error("{origin}: no object in it: expected at least one YAML document with apiVersion, kind and metadata.name")]
    Empty {
        /// The manifest.
        origin: String,
    },
    /// The cluster would not take a document: it serves no such kind, or refused the object.
    #[error("{origin}: document {document} ({what}): {message}")]
    Apply {
        /// The manifest.
        origin: String,
        /// Which document, from 1.
        document: usize,
        /// Its kind and name.
        what: String,
        /// What the apiserver said.
        message: String,
    },
}

impl Manifest {
    /// Where the object goes: its own namespace, else the step's, else `default`. Both written
    /// and different is refused, as `kubectl apply -n` refuses it, rather than silently picking
    /// one. (Cluster-scoped kinds ignore this; only discovery knows which kinds those are.)
    ///
    /// # Errors
    /// Which document says what, when the manifest and the step disagree.
    pub fn namespace(&self, step: Option<&str>) -> Result<String, String> {
        match (self.written_namespace.as_deref(), step) {
            (Some(own), Some(step)) if own != step => Err(format!(
                "document {} (line {}): {} {} says namespace {own:?}, the step says namespace = {step:?}: expected them to agree (or one of them left out)",
                self.document, self.line, self.type_meta.kind, self.name
            )),
            (Some(ns), _) | (None, Some(ns)) => Ok(ns.to_string()),
            (None, None) => Ok("default".to_string()),
        }
    }

    /// The API group, version and kind to look up.
    ///
    /// # Errors
    /// A message when `apiVersion` is not `version` or `group/version`.
    pub fn gvk(&self) -> Result<GroupVersionKind, String> {
        let written = &self.type_meta.api_version;
        let expected = format!("expected apiVersion like \"v1\" or \"apps/v1\", saw {written:?}");
        // kube's parser takes anything after the first '/' as the version ("a/b/c" -> "b/c").
        let well_formed = match written.split_once('/') {
            Some((group, version)) => {
                !group.is_empty() && !version.is_empty() && !version.contains('/')
            }
            None => !written.is_empty(),
        };
        if !well_formed {
            return Err(expected);
        }
        GroupVersionKind::try_from(&self.type_meta).map_err(|e| format!("{expected}: {e}"))
    }
}

/// Splits YAML text into documents at `---` lines and checks each is one Kubernetes object.
/// Splitting here (rather than in the YAML library) keeps each document's line for messages;
/// a `---` in column 0 always ends a document in YAML, so this is exact.
///
/// # Errors
/// [`ManifestError`] for the first document that is not valid YAML or lacks apiVersion, kind or
/// metadata.name, and for text with no object at all.
pub fn parse_manifests(text: &str, origin: &str) -> Result<Vec<Manifest>, ManifestError> {
    let mut chunks: Vec<(usize, String)> = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        let marker = line
            .strip_prefix("---")
            .filter(|rest| rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t'));
        if let Some(rest) = marker {
            // `--- {inline: document}` is legal YAML: the rest of the line belongs to it.
            chunks.push((i + 1, format!("{rest}\n")));
        } else if line == "..." {
            // The document-end marker: what follows until the next `---` is not a document.
            chunks.push((i + 1, String::new()));
        } else if let Some((_, chunk)) = chunks.last_mut() {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    let mut manifests = Vec::new();
    let mut document = 0;
    for (line, chunk) in chunks {
        let value: serde_json::Value = match serde_yaml_ng::from_str(&chunk) {
            Ok(value) => value,
            Err(e) => {
                document += 1;
                let at = e
                    .location()
                    .map_or(line, |l| line + l.line().saturating_sub(1));
                return Err(ManifestError::Invalid {
                    origin: origin.to_string(),
                    document,
                    line: at,
                    message: format!("not valid YAML: {e}"),
                });
            }
        };
        // Comments only, or nothing between two `---`: kubectl skips these too.
        if value.is_null() {
            continue;
        }
        document += 1;
        let invalid = |message: String| ManifestError::Invalid {
            origin: origin.to_string(),
            document,
            line,
            message,
        };
        let text_at = |pointer: &str| -> Result<Option<String>, ManifestError> {
            match value.pointer(pointer) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(other) => Err(invalid(format!(
                    "expected {pointer} to be a non-empty string, saw {other}"
                ))),
            }
        };
        if !value.is_object() {
            return Err(invalid(format!(
                "expected a Kubernetes object (a mapping with apiVersion, kind, metadata), saw {}",
                short(&value)
            )));
        }
        let required = |pointer: &str, example: &str| {
            text_at(pointer)?.ok_or_else(|| {
                invalid(format!(
                    "missing {pointer}: every object needs one (e.g. {example})"
                ))
            })
        };
        let api_version = required("/apiVersion", "apiVersion: apps/v1")?;
        let kind = required("/kind", "kind: Deployment")?;
        if kind.ends_with("List") {
            return Err(invalid(format!(
                "expected one object per document, saw a {kind}: write its items as documents separated by ---"
            )));
        }
        let name = required("/metadata/name", "metadata: {name: web}")?;
        let written_namespace = text_at("/metadata/namespace")?;
        let manifest = Manifest {
            document,
            line,
            type_meta: TypeMeta { api_version, kind },
            name,
            written_namespace,
            body: value.clone(),
        };
        manifest.gvk().map_err(invalid)?;
        manifests.push(manifest);
    }
    if manifests.is_empty() {
        return Err(ManifestError::Empty {
            origin: origin.to_string(),
        });
    }
    Ok(manifests)
}

fn short(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

/// Parses `text` and applies every document in order, by server-side apply (field manager
/// `labtest`, forced); a namespaced object goes where [`Manifest::namespace`] says. Returns one
/// line per object applied.
///
/// # Errors
/// [`ManifestError`] for a document that does not parse, a kind the cluster does not serve, or
/// an object the apiserver refuses: the first one stops the rest.
pub async fn apply(
    client: &Client,
    text: &str,
    origin: &str,
    namespace: Option<&str>,
) -> Result<Vec<String>, ManifestError> {
    let manifests = parse_manifests(text, origin)?;
    let mut applied = Vec::new();
    for manifest in manifests {
        let refused = |message: String| ManifestError::Apply {
            origin: origin.to_string(),
            document: manifest.document,
            what: format!("{} {}", manifest.type_meta.kind, manifest.name),
            message,
        };
        let gvk = manifest.gvk().map_err(&refused)?;
        let (resource, capabilities) = pinned_kind(client, &gvk).await.map_err(|e| {
            refused(format!(
                "the cluster serves no {} in {}: {}",
                gvk.kind,
                manifest.type_meta.api_version,
                crate::error::Chain(&e)
            ))
        })?;
        let mut body = manifest.body.clone();
        let (api, place) = match capabilities.scope {
            Scope::Cluster => (
                Api::<DynamicObject>::all_with(client.clone(), &resource),
                manifest.name.clone(),
            ),
            Scope::Namespaced => {
                let ns = manifest.namespace(namespace).map_err(&refused)?;
                // Server-side apply wants the body's namespace to match the URL's.
                body["metadata"]["namespace"] = serde_json::Value::String(ns.clone());
                (
                    Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource),
                    format!("{ns}/{}", manifest.name),
                )
            }
        };
        api.patch(
            &manifest.name,
            &PatchParams::apply("labtest").force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| refused(format!("applying {place}: {}", crate::error::Chain(&e))))?;
        applied.push(format!(
            "applied {} {place} ({})",
            manifest.type_meta.kind, manifest.type_meta.api_version
        ));
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> &'static str {
        "manifests/x.yaml"
    }

    #[test]
    fn documents_are_split_with_their_lines_and_empty_ones_skipped() {
        let text = "# a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n---\n# nothing\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: demo\nspec:\n  replicas: 2\n";
        let docs = parse_manifests(text, origin()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].document, docs[0].line), (1, 2));
        assert_eq!(docs[0].type_meta.kind, "Namespace");
        assert_eq!(docs[0].written_namespace, None);
        assert_eq!((docs[1].document, docs[1].line), (2, 9));
        assert_eq!(docs[1].name, "web");
        assert_eq!(docs[1].written_namespace.as_deref(), Some("demo"));
        assert_eq!(docs[1].body["spec"]["replicas"], 2);
        let gvk = docs[1].gvk().unwrap();
        assert_eq!((gvk.group.as_str(), gvk.version.as_str()), ("apps", "v1"));
        let core = docs[0].gvk().unwrap();
        assert_eq!((core.group.as_str(), core.version.as_str()), ("", "v1"));
    }

    #[test]
    fn a_single_document_needs_no_separator() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n";
        let docs = parse_manifests(text, origin()).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].line, 1);
        // `---` only separates in column 0 followed by nothing or a space.
        let text =
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  x: |\n    ---\n    y\n";
        let docs = parse_manifests(text, origin()).unwrap();
        assert_eq!(docs[0].body["data"]["x"], "---\ny\n");
    }

    #[test]
    fn bad_documents_say_which_document_and_line() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nmetadata:\n  name: b\n";
        let e = parse_manifests(text, origin()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "manifests/x.yaml: document 2 (line 4): missing /kind: every object needs one (e.g. kind: Deployment)"
        );
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n";
        let e = parse_manifests(text, origin()).unwrap_err();
        let ManifestError::Invalid { line, message, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(message.starts_with("not valid YAML"), "{message}");
        assert!(*line >= 4, "{e}");
        let e = parse_manifests("- a\n- b\n", origin()).unwrap_err();
        assert!(
            e.to_string().contains("expected a Kubernetes object"),
            "{e}"
        );
        let e = parse_manifests(
            "apiVersion: v1\nkind: PodList\nmetadata: {name: x}\n",
            origin(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("one object per document"), "{e}");
        let e = parse_manifests("apiVersion: v1\nkind: Pod\nmetadata: {name: 3}\n", origin())
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("/metadata/name to be a non-empty string"),
            "{e}"
        );
        assert_eq!(
            parse_manifests("# only a comment\n---\n", origin()),
            Err(ManifestError::Empty {
                origin: origin().into()
            })
        );
    }

    #[test]
    fn namespaces_come_from_the_object_then_the_step_then_default() {
        let doc = |ns: Option<&str>| {
            let meta = match ns {
                Some(ns) => format!("{{name: web, namespace: {ns}}}"),
                None => "{name: web}".to_string(),
            };
            let text = format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {meta}\n");
            parse_manifests(&text, origin()).unwrap().remove(0)
        };
        assert_eq!(doc(None).namespace(None).unwrap(), "default");
        assert_eq!(doc(None).namespace(Some("demo")).unwrap(), "demo");
        assert_eq!(doc(Some("own")).namespace(None).unwrap(), "own");
        assert_eq!(doc(Some("same")).namespace(Some("same")).unwrap(), "same");
        let e = doc(Some("own")).namespace(Some("demo")).unwrap_err();
        assert!(
            e.starts_with("document 1 (line 1): Deployment web says namespace \"own\""),
            "{e}"
        );
    }

    #[test]
    fn api_versions_that_are_not_group_version_are_refused() {
        for bad in ["a/b/c", "/v1", "apps/"] {
            let text = format!("apiVersion: {bad}\nkind: Thing\nmetadata: {{name: t}}\n");
            let e = parse_manifests(&text, origin()).unwrap_err();
            assert!(e.to_string().contains("expected apiVersion like"), "{e}");
        }
    }
}
