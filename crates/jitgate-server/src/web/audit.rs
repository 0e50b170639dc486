//! The audit log: filters (caller, resource, operation, status, time), keyset paging, export as
//! JSON Lines or CSV, and the chain verification for those allowed to read the whole log. The
//! same filter parser and the same per-record permission as `GET /api/v1/audit`.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

use jitgate_core::audit::AuditStatus;
use jitgate_core::rbac::actions;
use jitgate_store::{AuditFilter, AuditRecord};

use super::layout::{self, chip, Nav, Tone};
use super::{enc, error_page, html, Fields, Viewer};
use crate::arm::Query;
use crate::authz::Grants;
use crate::error::ApiError;
use crate::App;

/// Records per page.
const PAGE: usize = 50;
/// The most records one export holds.
const EXPORT_MAX: usize = 100_000;
const FILTERS: [&str; 6] = ["caller", "resourceId", "operation", "status", "from", "to"];

/// The page's filters as the API reads them; a `datetime-local` value is taken as UTC.
fn parse_filter(uri: &Uri) -> Result<(AuditFilter, Vec<(String, String)>), ApiError> {
    let f = Fields::parse(uri.query().unwrap_or("").as_bytes());
    let mut kept = Vec::new();
    for k in FILTERS {
        if let Some(v) = f.text(k) {
            let v = if (k == "from" || k == "to") && v.len() == 16 && v.as_bytes().get(10) == Some(&b'T') {
                format!("{v}:00Z")
            } else {
                v.to_owned()
            };
            kept.push((k.to_owned(), v));
        }
    }
    let raw: Vec<String> = kept.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
    let filter = crate::api_audit::filter(&Query::parse(Some(&raw.join("&"))))?;
    Ok((filter, kept))
}

/// The viewer's grants, if they may read the audit log anywhere.
async fn reader(app: &App, viewer: &Viewer) -> Result<std::sync::Arc<Grants>, ApiError> {
    let grants = app.authz.grants(app.store.as_ref(), &viewer.principal).await?;
    if !grants.assignments.iter().any(|(_, role)| role.allows(actions::AUDIT_READ)) {
        return Err(crate::authz::denied(&viewer.principal.label(), actions::AUDIT_READ, "/"));
    }
    Ok(grants)
}

/// `GET /audit`.
pub async fn page(State(app): State<App>, viewer: Viewer, uri: Uri) -> Response {
    match render(&app, &viewer, &uri).await {
        Ok(m) => html(StatusCode::OK, layout::page(&viewer, "Audit", Nav::Audit, m)),
        Err(e) => error_page(Some(&viewer), e),
    }
}

async fn render(app: &App, viewer: &Viewer, uri: &Uri) -> Result<Markup, ApiError> {
    let grants = reader(app, viewer).await?;
    let (filter, kept) = parse_filter(uri)?;
    let f = Fields::parse(uri.query().unwrap_or("").as_bytes());
    let after = f.get("after").and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
    let page = app.store.query_audit(&filter, after, PAGE).await?;
    let next = (page.len() == PAGE).then(|| page.last().map(|r| r.seq)).flatten();
    let rows: Vec<&AuditRecord> =
        page.iter().filter(|r| grants.permits(actions::AUDIT_READ, &r.event.resource_id)).collect();
    let verification =
        if grants.permits(actions::AUDIT_READ, "/") { Some(app.store.verify_audit().await?) } else { None };
    let query: String = kept.iter().map(|(k, v)| format!("&{k}={}", enc(v))).collect();
    let value = |k: &str| kept.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default();
    Ok(html! {
        h1 { "Audit" }
        @if let Some(v) = verification {
            p {
                "Hash chain: "
                @if v.valid { (chip(Tone::Ok, "Verified")) " " (v.records) " records" }
                @else { (chip(Tone::Bad, "Broken")) " first bad record: " (v.first_invalid.map(|s| s.to_string()).unwrap_or_default()) }
                @if let Some(a) = v.archived_through { span.muted { " (records up to " (a) " archived)" } }
            }
        }
        form.toolbar method="get" action="/audit" {
            div.field { label for="caller" { "Caller" } input #caller name="caller" value=(value("caller")); }
            div.field { label for="resourceId" { "Resource" } input #resourceId name="resourceId" value=(value("resourceId")) placeholder="/subscriptions/…"; }
            div.field { label for="operation" { "Operation" } input #operation name="operation" value=(value("operation")); }
            div.field {
                label for="status" { "Status" }
                select #status name="status" {
                    option value="" { "All" }
                    @for s in ["Succeeded", "Failed", "Started"] { option value=(s) selected[value("status") == s] { (s) } }
                }
            }
            div.field { label for="from" { "From (UTC)" } input #from name="from" type="text" value=(value("from")) placeholder="2026-01-31T00:00:00Z"; }
            div.field { label for="to" { "To (UTC)" } input #to name="to" type="text" value=(value("to")) placeholder="2026-02-01T00:00:00Z"; }
            button type="submit" { "Apply" }
        }
        p {
            a href={ "/audit/export?format=jsonl" (query) } download { "Export JSON Lines" }
            " · "
            a href={ "/audit/export?format=csv" (query) } download { "Export CSV" }
        }
        div.table-wrap tabindex="0" role="region" aria-label="Audit records" { table {
            thead { tr { th { "#" } th { "Time" } th { "Operation" } th { "Status" } th { "Caller" } th { "Resource" } th { "Details" } } }
            tbody {
                @for r in &rows {
                    tr {
                        td { (r.seq) }
                        td { (layout::when(r.event.time)) }
                        td { (short_op(&r.event.operation)) }
                        td { (status_chip(r.event.status)) }
                        td { (r.event.caller) @if let Some(ip) = &r.event.caller_ip { br; span.muted { (ip) } } }
                        td.wrap { code { (r.event.resource_id) } }
                        td.wrap { @for (k, v) in &r.event.properties { span.muted { (k) ": " } (v) br; } }
                    }
                }
                @if rows.is_empty() { tr { td colspan="7" { "No record matches." } } }
            }
        } }
        nav.pager aria-label="Pages" {
            @if after > 0 { a href={ "/audit?after=0" (query) } { "First page" } }
            @if let Some(n) = next { a href={ "/audit?after=" (n) (query) } { "Next page" } }
        }
    })
}

fn short_op(op: &str) -> String {
    let parts: Vec<&str> = op.split('/').collect();
    match parts.as_slice() {
        [.., a, b] => format!("{a}/{b}"),
        _ => op.to_owned(),
    }
}

fn status_chip(s: AuditStatus) -> Markup {
    match s {
        AuditStatus::Succeeded => chip(Tone::Ok, "Succeeded"),
        AuditStatus::Failed => chip(Tone::Bad, "Failed"),
        AuditStatus::Started => chip(Tone::Info, "Started"),
    }
}

/// A CSV field: quoted, quotes doubled, and a leading `= + - @` defused for spreadsheets.
fn csv(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_owned() };
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `GET /audit/export?format=jsonl|csv&…`: the filtered records the viewer may read.
pub async fn export(State(app): State<App>, viewer: Viewer, uri: Uri) -> Response {
    let result = async {
        let grants = reader(&app, &viewer).await?;
        let (filter, _) = parse_filter(&uri)?;
        let f = Fields::parse(uri.query().unwrap_or("").as_bytes());
        let csv_format = f.get("format") == Some("csv");
        let mut out = String::new();
        if csv_format {
            out.push_str("sequence,eventTimestamp,operationName,status,caller,callerIpAddress,resourceId,correlationId,properties,hash\n");
        }
        let (mut after, mut count) = (0u64, 0usize);
        loop {
            let page = app.store.query_audit(&filter, after, 1000).await?;
            for r in page.iter().filter(|r| grants.permits(actions::AUDIT_READ, &r.event.resource_id)) {
                let o = crate::api_audit::record_out(r);
                if csv_format {
                    let props = serde_json::to_string(&o.properties).unwrap_or_default();
                    let cols = [
                        o.sequence.to_string(),
                        o.event_timestamp.clone(),
                        o.operation_name.clone(),
                        o.status.clone(),
                        o.caller.clone(),
                        o.caller_ip_address.clone().unwrap_or_default(),
                        o.resource_id.clone(),
                        o.correlation_id.clone(),
                        props,
                        o.hash.clone(),
                    ];
                    out.push_str(&cols.iter().map(|c| csv(c)).collect::<Vec<_>>().join(","));
                } else {
                    out.push_str(&serde_json::to_string(&o).unwrap_or_default());
                }
                out.push('\n');
                count += 1;
            }
            match page.last() {
                Some(last) if page.len() == 1000 && count < EXPORT_MAX => after = last.seq,
                _ => break,
            }
        }
        Ok::<_, ApiError>((out, csv_format))
    }
    .await;
    match result {
        Ok((body, is_csv)) => {
            let (ctype, name) = if is_csv {
                ("text/csv; charset=utf-8", "attachment; filename=\"jitgate-audit.csv\"")
            } else {
                ("application/x-ndjson", "attachment; filename=\"jitgate-audit.jsonl\"")
            };
            let mut resp = (StatusCode::OK, body).into_response();
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            resp.headers_mut().insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(name));
            resp
        }
        Err(e) => error_page(Some(&viewer), e),
    }
}
