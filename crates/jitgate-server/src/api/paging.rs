//! Paging and filtering of `GET /api/v1/vms` as Azure's list APIs page: `$top` (1..=1000),
//! `$skipToken` (opaque: the last key of the page before), `nextLink` (the next page, same
//! filters), and the filters `subscription`, `resourceGroup`, `location` (exact,
//! case-insensitive) and `name` (exact, or a prefix when it ends with `*`). VMs come in the
//! order of their keys (lower-cased ids). Without `$top` every VM after the skip token comes in
//! one answer, as before paging existed.

use std::ops::Range;

use base64::Engine;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use jitgate_core::inventory::View;
use jitgate_core::rbac::actions;
use jitgate_core::VmId;
use jitgate_store::Vm;

use super::inventory::parse_view;
use crate::arm::Query;
use crate::authz::Grants;
use crate::error::ApiError;
use crate::web::inventory::Snapshot;

/// The largest page.
pub const MAX_TOP: usize = 1000;

const TOKEN: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The `name` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameFilter {
    Exact(String),
    Prefix(String),
}

/// What a list asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListParams {
    pub view: Option<View>,
    pub top: Option<usize>,
    /// The key of the last VM of the page before.
    pub after: Option<String>,
    pub subscription: Option<String>,
    pub resource_group: Option<String>,
    pub location: Option<String>,
    pub name: Option<NameFilter>,
}

fn invalid(code: &str, target: &str, message: String) -> ApiError {
    let mut e = ApiError::bad_request(code, message);
    e.target = Some(target.into());
    e
}

/// A skip token for the page after the VM with this key.
pub fn skip_token(key: &str) -> String {
    TOKEN.encode(key)
}

fn read_skip_token(t: &str) -> Result<String, ApiError> {
    let refuse = || invalid("InvalidSkipToken", "$skipToken", format!("'{t}' is not a skip token from a nextLink"));
    let key = TOKEN.decode(t.trim()).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(refuse)?;
    // A token holds the key of a VM: anything else was not made here.
    match VmId::parse(&key) {
        Ok(id) if id.key() == key => Ok(key),
        _ => Err(refuse()),
    }
}

impl ListParams {
    pub fn parse(q: &Query) -> Result<Self, ApiError> {
        let text = |k: &str| q.get(k).map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        let view = match q.get("view") {
            None | Some("") => None,
            Some(v) => Some(parse_view(v)?),
        };
        let top = match q.get("$top") {
            None => None,
            Some(t) => Some(t.trim().parse::<usize>().ok().filter(|n| (1..=MAX_TOP).contains(n)).ok_or_else(|| {
                invalid("InvalidTop", "$top", format!("$top '{t}' is not a whole number from 1 to {MAX_TOP}"))
            })?),
        };
        let after = match q.get("$skipToken") {
            None | Some("") => None,
            Some(t) => Some(read_skip_token(t)?),
        };
        let name = text("name").map(|n| match n.strip_suffix('*') {
            Some(prefix) => NameFilter::Prefix(prefix.to_ascii_lowercase()),
            None => NameFilter::Exact(n),
        });
        Ok(ListParams {
            view,
            top,
            after,
            subscription: text("subscription"),
            resource_group: text("resourceGroup"),
            location: text("location"),
            name,
        })
    }

    /// Whether the filters keep this VM.
    pub fn matches(&self, vm: &Vm) -> bool {
        let id = &vm.spec.id;
        let same = |want: &Option<String>, have: &str| want.as_ref().is_none_or(|w| w.eq_ignore_ascii_case(have));
        same(&self.subscription, id.subscription())
            && same(&self.resource_group, id.resource_group())
            && same(&self.location, &vm.spec.location)
            && match &self.name {
                None => true,
                Some(NameFilter::Exact(n)) => n.eq_ignore_ascii_case(id.name()),
                Some(NameFilter::Prefix(p)) => {
                    id.name().len() >= p.len() && id.name().as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
                }
            }
    }

    /// The key prefix of every VM the subscription and resource group filters keep.
    fn key_prefix(&self) -> Option<String> {
        let sub = self.subscription.as_ref()?.to_ascii_lowercase();
        Some(match &self.resource_group {
            Some(rg) => format!("/subscriptions/{sub}/resourcegroups/{}/", rg.to_ascii_lowercase()),
            None => format!("/subscriptions/{sub}/"),
        })
    }

    /// The query of the page after the VM with key `last`: the same filters and size.
    pub fn next_query(&self, last: &str) -> String {
        let enc = |v: &str| utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
        let mut pairs = Vec::new();
        if let Some(v) = self.view {
            let name = match v {
                View::Configured => "configured",
                View::NotConfigured => "notConfigured",
                View::Unsupported => "unsupported",
            };
            pairs.push(format!("view={name}"));
        }
        for (k, v) in [
            ("subscription", &self.subscription),
            ("resourceGroup", &self.resource_group),
            ("location", &self.location),
        ] {
            if let Some(v) = v {
                pairs.push(format!("{k}={}", enc(v)));
            }
        }
        match &self.name {
            Some(NameFilter::Exact(n)) => pairs.push(format!("name={}", enc(n))),
            Some(NameFilter::Prefix(p)) => pairs.push(format!("name={}*", enc(p))),
            None => {}
        }
        if let Some(top) = self.top {
            pairs.push(format!("$top={top}"));
        }
        pairs.push(format!("$skipToken={}", skip_token(last)));
        pairs.join("&")
    }
}

/// The ranges of `keys` (sorted) that hold every key starting with one of `prefixes`, in order,
/// without overlaps.
fn prefix_ranges(keys: &[String], prefixes: &[String]) -> Vec<Range<usize>> {
    let mut ranges: Vec<Range<usize>> = prefixes
        .iter()
        .map(|p| {
            let start = keys.partition_point(|k| k.as_str() < p.as_str());
            let len = keys[start..].partition_point(|k| k.starts_with(p.as_str()));
            start..start + len
        })
        .filter(|r| !r.is_empty())
        .collect();
    ranges.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    let mut out: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Where in `snapshot` the VMs the caller may read and the filters keep can be: the key ranges
/// of the scopes where the caller may read VMs, within the filters' subscription and resource
/// group. Only a narrowing: each VM in them is still checked.
fn candidate_ranges(snapshot: &Snapshot, grants: &Grants, params: &ListParams) -> Vec<Range<usize>> {
    let mut prefixes: Vec<String> = Vec::new();
    for (scope, role) in &grants.assignments {
        if !role.allows(actions::VM_READ) {
            continue;
        }
        let scope = scope.trim_end_matches('/').to_ascii_lowercase();
        prefixes.push(match &params.key_prefix() {
            Some(f) if f.starts_with(&scope) => f.clone(),
            Some(f) if scope.starts_with(f.as_str()) => scope,
            Some(_) => continue,
            None => scope,
        });
    }
    prefix_ranges(&snapshot.keys, &prefixes)
}

/// One page: the indices in `snapshot` of the VMs shown, and whether more follow.
pub fn select(snapshot: &Snapshot, grants: &Grants, params: &ListParams) -> (Vec<usize>, bool) {
    let start = params.after.as_ref().map_or(0, |a| snapshot.keys.partition_point(|k| k.as_str() <= a.as_str()));
    let top = params.top.unwrap_or(usize::MAX);
    let mut page = Vec::new();
    for range in candidate_ranges(snapshot, grants, params) {
        for i in range.start.max(start)..range.end {
            if params.view.is_some_and(|v| snapshot.views[i] != v) {
                continue;
            }
            let vm = &snapshot.vms[i];
            if !params.matches(vm) || !grants.permits(actions::VM_READ, vm.spec.id.as_str()) {
                continue;
            }
            if page.len() == top {
                return (page, true);
            }
            page.push(i);
        }
    }
    (page, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prefix_ranges_merge_nested_and_skip_absent_prefixes() {
        let k = keys(&["/s/a/1", "/s/a/2", "/s/b/1", "/s/c/1", "/s/c/2", "/t/a/1"]);
        assert_eq!(prefix_ranges(&k, &keys(&["/s/c", "/s/a"])), vec![0..2, 3..5]);
        assert_eq!(prefix_ranges(&k, &keys(&["/s", "/s/b"])), vec![0..5]);
        assert_eq!(prefix_ranges(&k, &keys(&[""])), vec![0..6]);
        assert_eq!(prefix_ranges(&k, &keys(&["/x", "/s/d"])), Vec::<Range<usize>>::new());
        assert_eq!(prefix_ranges(&k, &[]), Vec::<Range<usize>>::new());
    }

    #[test]
    fn skip_tokens_hold_a_vm_key_and_nothing_else() {
        let key = "/subscriptions/b0000000-0000-4000-8000-000000000001/resourcegroups/rg1/providers/microsoft.compute/virtualmachines/vm1";
        assert_eq!(read_skip_token(&skip_token(key)).ok().as_deref(), Some(key));
        for bad in [
            "%%%",
            "not base64!",
            &TOKEN.encode("/etc/passwd"),
            &TOKEN.encode(key.to_uppercase()),
            &TOKEN.encode([0xff, 0xfe]),
        ] {
            let e = read_skip_token(bad).err().map(|e| e.code);
            assert_eq!(e.as_deref(), Some("InvalidSkipToken"), "{bad}");
        }
    }
}
