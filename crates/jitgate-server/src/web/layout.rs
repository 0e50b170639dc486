//! The frame of every page: header with the signed-in principal and Sign out, the left
//! navigation, the main content; and small pieces pages share (chips, the CSRF field, times).

use maud::{html, Markup, DOCTYPE};
use time::OffsetDateTime;

use super::assets::{SCRIPT, STYLE};
use super::Viewer;

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Jit,
    MyAccess,
    Approvals,
    Audit,
    AccessControl,
    EnforcementPoints,
    None,
}

const ENTRIES: [(Nav, &str, &str); 6] = [
    (Nav::Jit, "/jit", "JIT VM access"),
    (Nav::MyAccess, "/access", "My access"),
    (Nav::Approvals, "/approvals", "Approvals"),
    (Nav::Audit, "/audit", "Audit"),
    (Nav::AccessControl, "/access-control", "Access control"),
    (Nav::EnforcementPoints, "/enforcement-points", "Enforcement points"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · jitgate" }
            link rel="icon" href="data:,";
            link rel="stylesheet" href={ "/assets/" (STYLE.name) };
            script src={ "/assets/" (SCRIPT.name) } defer {}
        }
    }
}

/// A page for a signed-in person.
pub fn page(viewer: &Viewer, title: &str, current: Nav, content: Markup) -> Markup {
    page_with(viewer, title, current, content, None)
}

/// A page with extra `<head>` content (a refresh for pages without JavaScript).
pub fn page_with(viewer: &Viewer, title: &str, current: Nav, content: Markup, refresh: Option<u32>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            @if let Some(secs) = refresh { meta http-equiv="refresh" content=(secs); }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/jit" { "jitgate" }
                    span.who { "Signed in as " strong { (viewer.principal.label()) } }
                    form.inline method="post" action="/signout" {
                        (csrf(viewer))
                        button type="submit" { "Sign out" }
                    }
                }
                div.shell {
                    nav.side aria-label="Portal" {
                        ul {
                            @for (nav, href, label) in ENTRIES {
                                li { a href=(href) aria-current=[(nav == current).then_some("page")] { (label) } }
                            }
                        }
                    }
                    main #main { (content) }
                }
            }
        }
    }
}

/// A page outside a session (sign-in, errors before sign-in).
pub fn bare(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main #main { (content) } }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// Colour of a status chip; the text always says the status too.
#[derive(Debug, Clone, Copy)]
pub enum Tone {
    Ok,
    Warn,
    Bad,
    Info,
}

pub fn chip(tone: Tone, text: &str) -> Markup {
    let class = match tone {
        Tone::Ok => "chip ok",
        Tone::Warn => "chip warn",
        Tone::Bad => "chip bad",
        Tone::Info => "chip",
    };
    html! { span class=(class) { (text) } }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds): what HTML's `datetime` and JavaScript's
/// `Date.parse` read.
pub fn iso_seconds(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A time as people read it (UTC), with the machine form in `<time>`.
pub fn when(t: OffsetDateTime) -> Markup {
    let iso = iso_seconds(t);
    let shown =
        format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute());
    html! { time datetime=(iso) { (shown) } }
}

/// A grant's state in words and colour.
pub fn grant_chip(g: &jitgate_core::records::GrantRecord, now: OffsetDateTime) -> Markup {
    let (tone, text) = grant_state(g, now);
    chip(tone, text)
}

/// A grant's state in words.
pub fn grant_state(g: &jitgate_core::records::GrantRecord, now: OffsetDateTime) -> (Tone, &'static str) {
    use jitgate_core::initiate::{GrantStatus as S, StatusReason as R};
    match (g.status, g.status_reason) {
        (S::Initiated, _) if g.end_time > now => (Tone::Ok, "Active"),
        (S::Initiated, _) => (Tone::Info, "Expired"),
        (S::Pending, _) => (Tone::Warn, "Pending approval"),
        (S::Scheduled, _) => (Tone::Warn, "Scheduled"),
        (S::Revoked, R::Expired) => (Tone::Info, "Expired"),
        (S::Revoked, R::Denied) => (Tone::Bad, "Denied"),
        (S::Revoked, R::ApprovalExpired) => (Tone::Bad, "Approval expired"),
        (S::Revoked, R::NewerRequestInitiated) => (Tone::Info, "Superseded"),
        (S::Revoked, R::PolicyDeleted) => (Tone::Bad, "Policy deleted"),
        (S::Revoked, _) => (Tone::Bad, "Revoked"),
    }
}
