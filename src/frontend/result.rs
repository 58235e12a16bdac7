//! The one mapping from a [`RunReport`] to an MCP result, and the bound on
//! every answer the front end writes: a `tools/call` result or a
//! `resources/read` answer never takes more than [`MAX_ANSWER_BYTES`] of
//! JSON, so its JSON-RPC line stays under the 16 MiB that clients (rmcp's
//! and the SDKs' stdio readers) accept. A client that drops a longer line
//! would wait forever.
//!
//! Owns the degrading of a result that would not fit (in this order: inline
//! file text becomes a resource link, images are left out from the last,
//! stdout and stderr are cut), each step said in a `note:`, and the refusal
//! of an artifact too large to read in one answer. Knows nothing of how a
//! report is made ([`crate::call`]) or rendered ([`RunReport::render`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rmcp::ErrorData;
use rmcp::model::{CallToolResult, ContentBlock, Resource, ResourceContents};

use crate::artifacts::Artifact;
use crate::config::OutputMode;
use crate::proxy::json_size;
use crate::report::{RunReport, RunStatus};

use super::transport::MAX_MESSAGE_BYTES;

/// The most bytes of JSON a result or a resource read may take: a 16 MiB
/// line less room for the JSON-RPC envelope (its `id` included).
pub const MAX_ANSWER_BYTES: usize = MAX_MESSAGE_BYTES - 64 * 1024;
/// The largest artifact `resources/read` serves: its base64 fits in an answer.
pub const MAX_ARTIFACT_READ_BYTES: usize = MAX_ANSWER_BYTES / 4 * 3 - 4096;

/// The result of a report: text for the model in the configured mode, the
/// report itself as `structuredContent`, and `isError` whenever the run did
/// not succeed; degraded, if need be, to fit in [`MAX_ANSWER_BYTES`].
pub fn tool_result(report: &RunReport, mode: OutputMode) -> CallToolResult {
    let result = build(report, mode);
    let bytes = json_size(&result);
    if bytes <= MAX_ANSWER_BYTES {
        return result;
    }
    fit(report.clone(), mode, bytes)
}

/// `report` made smaller until its result fits, `bytes` its size as is.
fn fit(mut report: RunReport, mode: OutputMode, mut bytes: usize) -> CallToolResult {
    if report.files.iter().any(|file| file.text.is_some()) {
        for file in &mut report.files {
            file.text = None;
            file.inline = false;
        }
        note(
            &mut report,
            "the files' text is not inline (read each file's resource)",
        );
        bytes = json_size(&build(&report, mode));
    }
    if bytes > MAX_ANSWER_BYTES && !report.images.is_empty() {
        let mut excess = bytes - MAX_ANSWER_BYTES;
        let before = report.images.len();
        while excess > 0
            && let Some(image) = report.images.pop()
        {
            // Its base64 in the content and its description beside it.
            excess = excess.saturating_sub(image.data.len().div_ceil(3) * 4 + 100);
        }
        let left_out = format!(
            "{} of {before} images left out",
            before - report.images.len()
        );
        note(&mut report, &left_out);
        bytes = json_size(&build(&report, mode));
    }
    if bytes > MAX_ANSWER_BYTES {
        note(&mut report, "stdout and stderr are cut short");
    }
    // The size grows with the streams' escaped bytes (each is in the text
    // and in `structuredContent`): keep the share of them that fits. Their
    // characters escape differently in the two copies, so check and repeat.
    while bytes > MAX_ANSWER_BYTES && !(report.stdout.is_empty() && report.stderr.is_empty()) {
        let (out, err) = (escaped_bytes(&report.stdout), escaped_bytes(&report.stderr));
        let mut empty = report.clone();
        (empty.stdout, empty.stderr) = (String::new(), String::new());
        let rest = json_size(&build(&empty, mode));
        let room = MAX_ANSWER_BYTES.saturating_sub(rest + 4096);
        let share = room as f64 / (bytes - rest).max(1) as f64;
        for (stream, escaped, truncated) in [
            (&mut report.stdout, out, &mut report.stdout_truncated),
            (&mut report.stderr, err, &mut report.stderr_truncated),
        ] {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let keep = (escaped as f64 * share) as usize;
            if keep < escaped {
                stream.truncate(escaped_prefix(stream, keep));
                *truncated = true;
            }
        }
        bytes = json_size(&build(&report, mode));
    }
    build(&report, mode)
}

/// Says in the report what was left out to fit, and why.
fn note(report: &mut RunReport, what: &str) {
    report.notes.push(format!(
        "{what}: the answer would have been over {MAX_ANSWER_BYTES} bytes (clients read at most \
         16 MiB per message)"
    ));
}

fn build(report: &RunReport, mode: OutputMode) -> CallToolResult {
    let structured = serde_json::to_value(report).expect("a report always serializes");
    let mut result = if report.status == RunStatus::Success {
        CallToolResult::structured(structured)
    } else {
        CallToolResult::structured_error(structured)
    };
    let mut content = Vec::with_capacity(1 + report.images.len() + 2 * report.files.len());
    content.push(ContentBlock::text(report.render(mode)));
    content.extend(
        report
            .images
            .iter()
            .map(|image| ContentBlock::image(BASE64.encode(&image.data), image.mime_type)),
    );
    for file in &report.files {
        let Some(uri) = &file.uri else {
            continue; // not kept: the notes say why
        };
        content.push(match &file.text {
            Some(text) => ContentBlock::resource(
                ResourceContents::text(text, uri).with_mime_type(file.mime_type),
            ),
            None => ContentBlock::resource_link(
                Resource::new(uri, format!("out/{}", file.path))
                    .with_mime_type(file.mime_type)
                    .with_size(file.bytes as u64),
            ),
        });
    }
    result.content = content;
    result
}

/// The contents `resources/read` answers with for a kept file: its text
/// when it is text and its escaped JSON fits, else base64; an error naming
/// the bound when even that would not fit.
pub fn artifact_contents(artifact: &Artifact) -> Result<ResourceContents, ErrorData> {
    if let Some(text) = artifact.text()
        && escaped_bytes(text) <= MAX_ANSWER_BYTES - 4096
    {
        return Ok(ResourceContents::text(text, &artifact.uri).with_mime_type(artifact.mime_type));
    }
    if artifact.bytes.len() > MAX_ARTIFACT_READ_BYTES {
        return Err(ErrorData::invalid_request(
            format!(
                "{} is {} bytes; one resources/read answer carries at most {} bytes of a file \
                 (its base64 must fit in the 16 MiB clients read per message): have the code \
                 write it in parts of at most that size",
                artifact.uri,
                artifact.bytes.len(),
                MAX_ARTIFACT_READ_BYTES
            ),
            None,
        ));
    }
    Ok(
        ResourceContents::blob(BASE64.encode(&artifact.bytes), &artifact.uri)
            .with_mime_type(artifact.mime_type),
    )
}

/// What `c` takes inside a JSON string as serde_json writes it.
fn escaped_char(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        '\0'..='\u{1f}' => 6,
        c => c.len_utf8(),
    }
}

fn escaped_bytes(text: &str) -> usize {
    text.chars().map(escaped_char).sum()
}

/// The longest prefix (in bytes, on a char boundary) of `text` whose
/// escaped JSON takes at most `budget` bytes.
fn escaped_prefix(text: &str, budget: usize) -> usize {
    let mut used = 0;
    for (at, c) in text.char_indices() {
        used += escaped_char(c);
        if used > budget {
            return at;
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::report::{Image, OutputFile};

    /// The worst case: both streams at the default 1 MiB cap, and at 3 MiB, all
    /// control characters (6 bytes each when escaped, in two copies), plus
    /// images and inline files; in every mode the result fits, with notes.
    #[test]
    fn every_result_fits_in_one_message() {
        let control = "\u{1}".repeat(3 << 20);
        for mode in [OutputMode::Compact, OutputMode::Json, OutputMode::Toon] {
            for output in [&control[..1 << 20], &control[..]] {
                let mut file = OutputFile::new("a.txt".into(), Bytes::from_static(b"x"));
                file.uri = Some("artifact://r/a.txt".into());
                file.text = Some("\u{1}".repeat(16 * 1024));
                file.inline = true;
                let report = RunReport {
                    stdout: output.into(),
                    stderr: output.into(),
                    images: (0..4)
                        .map(|i| Image::png(i, Bytes::from(vec![0; 1 << 20]), 1, 1))
                        .collect(),
                    files: vec![file],
                    ..RunReport::nothing_ran(RunStatus::Success)
                };
                let result = tool_result(&report, mode);
                let bytes = json_size(&result);
                let structured = result.structured_content.as_ref().unwrap();
                eprintln!(
                    "{mode:?}, {} bytes per stream: {bytes} bytes (stdout kept {}, {} images)",
                    output.len(),
                    structured["stdout"].as_str().unwrap().len(),
                    structured
                        .get("images")
                        .map_or(0, |i| i.as_array().unwrap().len()),
                );
                assert!(bytes <= MAX_ANSWER_BYTES, "{mode:?}: {bytes} bytes");
                if output.len() == 1 << 20 && mode == OutputMode::Compact {
                    // 24 MiB as is: cutting the inline file and images is not enough.
                    assert!(structured["stdoutTruncated"] == true, "{structured}");
                }
                let notes = structured["notes"].to_string();
                assert!(notes.contains("over 16711680 bytes"), "{notes}");
                assert!(
                    structured["stdout"].as_str().unwrap().len() > 1 << 18,
                    "the output is cut only as far as it must be"
                );
            }
        }
    }

    #[test]
    fn a_small_result_is_untouched() {
        let report = RunReport {
            stdout: "42\n".into(),
            ..RunReport::nothing_ran(RunStatus::Success)
        };
        let result = tool_result(&report, OutputMode::Compact);
        assert_eq!(
            result.structured_content.unwrap(),
            serde_json::to_value(&report).unwrap()
        );
    }

    #[test]
    fn escaped_sizes_match_serde_json() {
        let text = "a\"\\\n\u{1}\u{1f}é€😀\t";
        assert_eq!(
            escaped_bytes(text) + 2,
            serde_json::to_string(text).unwrap().len()
        );
        assert_eq!(escaped_prefix(text, 5), 3, "a, \\\" and \\\\ fit in 5");
        assert_eq!(escaped_prefix(text, 1000), text.len());
    }

    #[test]
    fn an_artifact_too_large_for_one_answer_is_refused_by_name() {
        let artifact = |bytes: usize, path: &str| Artifact {
            uri: format!("artifact://r/{path}"),
            path: path.into(),
            mime_type: crate::artifacts::mime_type(path),
            bytes: Bytes::from(vec![1u8; bytes]),
        };
        let text = artifact_contents(&artifact(4 << 20, "t.txt")).unwrap();
        assert!(
            matches!(text, ResourceContents::BlobResourceContents { .. }),
            "control characters would escape past the bound: served as base64"
        );
        assert!(artifact_contents(&artifact(MAX_ARTIFACT_READ_BYTES, "b.bin")).is_ok());
        let error = artifact_contents(&artifact(MAX_ARTIFACT_READ_BYTES + 1, "b.bin")).unwrap_err();
        assert!(
            error.message.contains("artifact://r/b.bin"),
            "{}",
            error.message
        );
        let blob = artifact_contents(&artifact(MAX_ARTIFACT_READ_BYTES, "b.bin")).unwrap();
        assert!(json_size(&blob) <= MAX_ANSWER_BYTES);
    }
}
