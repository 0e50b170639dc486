#!/usr/bin/env python3
"""Acceptance test: drive jitgate's Azure-compatible JIT API with Azure's own Python SDK.

    python jit_sdk_test.py BASE_URL --ca-bundle PEM --subscription GUID --token TOKEN \
        --resource-group RG --vm-id ARM_ID --vm2-id ARM_ID

Talks to `Microsoft.Security/locations/jitNetworkAccessPolicies` (api-version 2020-01-01)
through `azure.mgmt.security.SecurityCenter` (azure-mgmt-security 7.x) and checks what the
SDK hands back: policy create/replace/get, the four list scopes with nextLink paging,
initiate (model and raw-JSON bodies), the request history, ARM error bodies and delete.

Both VMs must already be registered with jitgate (VM1 in westeurope, VM2 in northeurope) and
must not be covered by another policy. The test creates the policies `default` (westeurope,
VM1) and `default-b` (northeurope, VM2) in RG and deletes them at the end.

Exit status: 0 all checks passed, 1 at least one check failed, 2 usage or connection problem.
"""

import argparse
import datetime as dt
import json
import os
import sys
import time

LOC1 = "westeurope"
LOC2 = "northeurope"
POLICY1 = "default"
POLICY2 = "default-b"
POLICY_TYPE = "Microsoft.Security/locations/jitNetworkAccessPolicies"
MAX_NAME_SUM = 56  # policy name length + VM name length must not exceed this
TIME_TOLERANCE = dt.timedelta(seconds=1)  # "same end time" means equal to the second
CLOCK_SLACK = dt.timedelta(seconds=30)  # server and test share a host; allow some slack


class ConnectionProblem(Exception):
    """The server could not be reached (or the token was refused outright): exit 2."""


# --------------------------------------------------------------------------------------------
# Check bookkeeping and a record of every HTTP exchange (to show on failure).


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = []
        self.wire = []  # one dict per HTTP exchange, filled by the client's raw_response_hook

    def record(self, pipeline_response):
        req = pipeline_response.http_request
        resp = pipeline_response.http_response
        try:
            body = resp.text()
        except Exception:  # pragma: no cover - only for diagnostics
            body = "<unreadable>"
        req_body = req.body
        if isinstance(req_body, (bytes, bytearray)):
            req_body = req_body.decode("utf-8", "replace")
        self.wire.append({"method": req.method, "url": req.url, "request": req_body,
                          "status": resp.status_code, "response": body})

    def last_status(self):
        return self.wire[-1]["status"] if self.wire else None

    def last_exchange(self):
        if not self.wire:
            return "        (no HTTP exchange recorded)"
        ex = self.wire[-1]
        lines = [f"        last exchange: {ex['method']} {ex['url']} -> {ex['status']}"]
        if ex["request"]:
            lines.append(f"          request:  {shorten(ex['request'])}")
        lines.append(f"          response: {shorten(ex['response'])}")
        return "\n".join(lines)

    def check(self, label, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"  PASS  {label}")
        else:
            self.failed.append(label)
            print(f"  FAIL  {label}" + (f": {detail}" if detail else ""))
            print(self.last_exchange())
        return bool(ok)

    def eq(self, label, actual, expected):
        return self.check(label, actual == expected, f"got {actual!r}, expected {expected!r}")

    def call(self, label, fn):
        """Run an SDK call that must succeed; returns (ok, result)."""
        try:
            result = fn()
        except (ServiceRequestError, ServiceResponseError) as e:
            raise ConnectionProblem(f"{label}: {e}") from e
        except HttpResponseError as e:
            err = e.error
            code = getattr(err, "code", None)
            message = getattr(err, "message", None)
            self.check(label, False, f"{type(e).__name__} status {e.status_code} ({code}: {message})")
            return False, None
        except Exception as e:  # e.g. DeserializationError on a malformed body
            self.check(label, False, f"{type(e).__name__}: {e}")
            return False, None
        self.check(label, True)
        return True, result

    def expect_error(self, label, fn, status, exc_type):
        """Run an SDK call that must fail with `status`, raised as `exc_type`, and an ARM error body."""
        try:
            fn()
        except (ServiceRequestError, ServiceResponseError) as e:
            raise ConnectionProblem(f"{label}: {e}") from e
        except HttpResponseError as e:
            err = e.error
            code = getattr(err, "code", None)
            message = getattr(err, "message", None)
            ok = (e.status_code == status and isinstance(e, exc_type) and bool(code) and bool(message))
            self.check(f"{label} -> {status} {exc_type.__name__} with error code+message", ok,
                       f"got {type(e).__name__} status {e.status_code}, code={code!r}, message={message!r}")
            if ok:
                print(f"        ({code}: {message})")
            return
        except Exception as e:
            self.check(f"{label} -> {status}", False, f"{type(e).__name__}: {e}")
            return
        self.check(f"{label} -> {status}", False,
                   f"the call succeeded (HTTP {self.last_status()}) but should have been refused")


def shorten(text, limit=1500):
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def section(title):
    print(f"\n== {title}")


# --------------------------------------------------------------------------------------------
# Small helpers around the SDK models.


class StaticToken:
    """A TokenCredential that always returns the bearer token given on the command line."""

    def __init__(self, token):
        self.token = token

    def get_token(self, *scopes, claims=None, tenant_id=None, enable_cae=False, **kwargs):
        return AccessToken(self.token, int(time.time()) + 3600)


def utcnow():
    return dt.datetime.now(dt.timezone.utc)


def iso(t):
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def policy_id(sub, rg, loc, name):
    return (f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Security"
            f"/locations/{loc}/jitNetworkAccessPolicies/{name}")


def port_rule(number, protocol, max_duration, prefix=None, prefixes=None):
    return M.JitNetworkAccessPortRule(number=number, protocol=protocol,
                                      allowed_source_address_prefix=prefix,
                                      allowed_source_address_prefixes=prefixes,
                                      max_request_access_duration=max_duration)


def policy_body(vm_id, ports):
    return M.JitNetworkAccessPolicy(kind="Basic", virtual_machines=[
        M.JitNetworkAccessPolicyVirtualMachine(id=vm_id, ports=ports)])


def initiate_body(vm_id, number, source, end_time, justification):
    port = M.JitNetworkAccessPolicyInitiatePort(number=number, allowed_source_address_prefix=source,
                                                end_time_utc=end_time)
    return M.JitNetworkAccessPolicyInitiateRequest(
        virtual_machines=[M.JitNetworkAccessPolicyInitiateVirtualMachine(id=vm_id, ports=[port])],
        justification=justification)


def raw_initiate_body(vm_id, port, justification):
    """JSON bytes: the SDK sends them untouched (the only way to send `duration`)."""
    return json.dumps({"virtualMachines": [{"id": vm_id, "ports": [port]}],
                       "justification": justification}).encode()


def rules_of(policy):
    """The configured rules as plain tuples, to compare what was sent with what came back."""
    out = []
    for vm in policy.virtual_machines or []:
        ports = [(p.number, p.protocol, p.allowed_source_address_prefix,
                  p.allowed_source_address_prefixes, p.max_request_access_duration)
                 for p in vm.ports or []]
        out.append((vm.id, ports))
    return out


def same_instant(a, b):
    return (a is not None and b is not None and a.tzinfo is not None and b.tzinfo is not None
            and abs(a - b) < TIME_TOLERANCE)


def find_request(policy, justification):
    for req in policy.requests or []:
        if req.justification == justification:
            return req
    return None


def first_port(request):
    """(vm, port) of a single-VM, single-port request, else (None, None)."""
    vms = request.virtual_machines or []
    if len(vms) != 1 or len(vms[0].ports or []) != 1:
        return None, None
    return vms[0], vms[0].ports[0]


# --------------------------------------------------------------------------------------------
# The scenario.


def check_policy(c, label, policy, expected_id, name, loc, expected_rules):
    c.eq(f"{label}: id", policy.id, expected_id)
    c.eq(f"{label}: name", policy.name, name)
    c.eq(f"{label}: type", policy.type, POLICY_TYPE)
    c.eq(f"{label}: location", policy.location, loc)
    c.eq(f"{label}: kind", policy.kind, "Basic")
    c.eq(f"{label}: provisioning_state", policy.provisioning_state, "Succeeded")
    c.eq(f"{label}: rules round-tripped (singular/plural prefixes as sent)",
         rules_of(policy), expected_rules)


def check_grant(c, label, req, vm_id, number, source, end_time, justification, t_before, t_after):
    """Checks a JitNetworkAccessRequest returned by initiate. end_time may be a (low, high) window."""
    c.check(f"{label}: requestor non-empty", bool(req.requestor), f"got {req.requestor!r}")
    start = req.start_time_utc
    c.check(f"{label}: start_time_utc is an aware time close to now",
            start is not None and start.tzinfo is not None
            and t_before - CLOCK_SLACK <= start <= t_after + CLOCK_SLACK,
            f"got {start!r}, request sent between {iso(t_before)} and {iso(t_after)}")
    c.eq(f"{label}: justification echoed", req.justification, justification)
    vm, port = first_port(req)
    if not c.check(f"{label}: one VM with one port", port is not None,
                   f"got {[(v.id, [p.number for p in v.ports or []]) for v in req.virtual_machines or []]}"):
        return
    c.check(f"{label}: VM id", (vm.id or "").lower() == vm_id.lower(), f"got {vm.id!r}, expected {vm_id!r}")
    c.eq(f"{label}: port number", port.number, number)
    c.eq(f"{label}: status", port.status, "Initiated")
    c.eq(f"{label}: status_reason", port.status_reason, "UserRequested")
    c.eq(f"{label}: allowed_source_address_prefix", port.allowed_source_address_prefix, source)
    got = port.end_time_utc
    if isinstance(end_time, tuple):
        low, high = end_time
        c.check(f"{label}: end_time_utc within [{iso(low)}, {iso(high)}]",
                got is not None and got.tzinfo is not None and low <= got <= high, f"got {got!r}")
    else:
        c.check(f"{label}: end_time_utc equals {iso(end_time)} (aware, to the second)",
                same_instant(got, end_time), f"got {got!r}")


def run(args, c):
    sub, rg = args.subscription, args.resource_group
    vm1, vm2 = args.vm_id, args.vm2_id
    run_tag = utcnow().strftime("%Y%m%dT%H%M%S")

    client = SecurityCenter(
        credential=StaticToken(args.token),
        subscription_id=sub,
        base_url=args.base_url.rstrip("/"),
        connection_verify=args.ca_bundle,
        retry_total=0,  # a wrong status must show up at once, not after retries
        connection_timeout=10,
        read_timeout=60,
        raw_response_hook=c.record,
    )
    ops = client.jit_network_access_policies

    vm1_name = vm1.rstrip("/").rsplit("/", 1)[-1]
    id1 = policy_id(sub, rg, LOC1, POLICY1)
    id2 = policy_id(sub, rg, LOC2, POLICY2)
    too_long = ("toolong" + "x" * MAX_NAME_SUM)[:max(1, MAX_NAME_SUM + 1 - len(vm1_name))]
    at_limit = ("atlimit" + "x" * MAX_NAME_SUM)[:max(0, MAX_NAME_SUM - len(vm1_name))]
    missing = f"no-such-policy-{run_tag}"

    section("reachability")
    try:
        ops.get(rg, LOC1, missing)
    except (ServiceRequestError, ServiceResponseError) as e:
        raise ConnectionProblem(f"cannot reach {args.base_url}: {e}") from e
    except ClientAuthenticationError as e:
        raise ConnectionProblem(f"the server refused the token (401): {e.message}") from e
    except HttpResponseError:
        pass  # the 404 itself is checked below
    print(f"  {args.base_url} answers")

    # Leftovers of an earlier, aborted run would pollute the history checks.
    for loc, name in [(LOC1, POLICY1), (LOC2, POLICY2), (LOC1, too_long), (LOC1, at_limit)]:
        if name:
            try:
                ops.delete(rg, loc, name)
            except HttpResponseError as e:
                print(f"  note: pre-clean delete of {loc}/{name} failed: {e.status_code}")

    section("unknown policy")
    c.expect_error("get of an unknown policy", lambda: ops.get(rg, LOC1, missing),
                   404, ResourceNotFoundError)
    c.expect_error("initiate on an unknown policy",
                   lambda: ops.initiate(rg, LOC1, missing, initiate_body(
                       vm1, 22, "127.0.0.1", utcnow() + dt.timedelta(hours=1), "unknown policy")),
                   404, ResourceNotFoundError)

    section(f"policy name + VM name limit ({MAX_NAME_SUM} characters; VM name {vm1_name!r})")
    ssh_only = [port_rule(22, "TCP", "PT3H", prefix="*")]
    c.expect_error(f"create_or_update of {too_long!r} ({len(too_long)}+{len(vm1_name)} chars)",
                   lambda: ops.create_or_update(rg, LOC1, too_long, policy_body(vm1, ssh_only)),
                   400, HttpResponseError)
    c.expect_error("get of the refused policy (not stored)",
                   lambda: ops.get(rg, LOC1, too_long), 404, ResourceNotFoundError)
    if at_limit:
        ok, _ = c.call(f"create_or_update of {at_limit!r} ({len(at_limit)}+{len(vm1_name)} chars, "
                       "exactly at the limit)",
                       lambda: ops.create_or_update(rg, LOC1, at_limit, policy_body(vm1, ssh_only)))
        if ok and c.call("delete of the at-limit policy", lambda: ops.delete(rg, LOC1, at_limit))[0]:
            c.eq("delete of the at-limit policy: answered 200", c.last_status(), 200)

    section(f"create_or_update {LOC1}/{POLICY1} and {LOC2}/{POLICY2}")
    rules1 = [port_rule(22, "TCP", "PT3H", prefix="*"),
              port_rule(3389, "*", "PT1H", prefixes=["10.0.0.0/24", "192.168.1.0/24"])]
    rules2 = [port_rule(22, "*", "PT3H", prefix="*")]
    expected1 = [(vm1, [(22, "TCP", "*", None, "PT3H"),
                        (3389, "*", None, ["10.0.0.0/24", "192.168.1.0/24"], "PT1H")])]
    expected2 = [(vm2, [(22, "*", "*", None, "PT3H")])]

    ok, p1 = c.call(f"create {POLICY1}", lambda: ops.create_or_update(rg, LOC1, POLICY1,
                                                                       policy_body(vm1, rules1)))
    if ok:
        c.eq(f"create {POLICY1}: answered 200", c.last_status(), 200)
        check_policy(c, f"create {POLICY1}", p1, id1, POLICY1, LOC1, expected1)
    ok, p2 = c.call(f"create {POLICY2}", lambda: ops.create_or_update(rg, LOC2, POLICY2,
                                                                       policy_body(vm2, rules2)))
    if ok:
        check_policy(c, f"create {POLICY2}", p2, id2, POLICY2, LOC2, expected2)

    section("replace and get")
    ok, p1 = c.call(f"PUT {POLICY1} again (replace)",
                    lambda: ops.create_or_update(rg, LOC1, POLICY1, policy_body(vm1, rules1)))
    if ok:
        c.eq("replace: answered 200", c.last_status(), 200)
        check_policy(c, "replace", p1, id1, POLICY1, LOC1, expected1)
    ok, g1 = c.call(f"get {POLICY1}", lambda: ops.get(rg, LOC1, POLICY1))
    if ok:
        check_policy(c, f"get {POLICY1}", g1, id1, POLICY1, LOC1, expected1)

    section("invalid policies are refused (400) and change nothing")
    invalid = [
        ("maxRequestAccessDuration PT25H", [port_rule(22, "TCP", "PT25H", prefix="*")]),
        ("maxRequestAccessDuration PT1M", [port_rule(22, "TCP", "PT1M", prefix="*")]),
        ("maxRequestAccessDuration 'three hours'", [port_rule(22, "TCP", "three hours", prefix="*")]),
        ("protocol ICMP", [port_rule(22, "ICMP", "PT3H", prefix="*")]),
    ]
    for what, rules in invalid:
        c.expect_error(f"PUT {POLICY1} with {what}",
                       lambda rules=rules: ops.create_or_update(rg, LOC1, POLICY1, policy_body(vm1, rules)),
                       400, HttpResponseError)
    ok, g1 = c.call(f"get {POLICY1} after the refused PUTs", lambda: ops.get(rg, LOC1, POLICY1))
    if ok:
        c.eq(f"{POLICY1} unchanged by the refused PUTs", rules_of(g1), expected1)

    section("lists (iterated through every nextLink page)")

    def listing(label, pager_fn, want, dont_want, scope_ok):
        start = len(c.wire)
        ok, items = c.call(label, lambda: list(pager_fn()))
        if not ok:
            return
        pages = sum(1 for ex in c.wire[start:] if ex["method"] == "GET")
        ids = [p.id or "" for p in items]
        print(f"        {len(items)} policies over {pages} page(s)")
        lower = [i.lower() for i in ids]
        c.check(f"{label}: no policy listed twice", len(set(lower)) == len(lower), f"ids {ids}")
        for pid in want:
            c.check(f"{label}: includes {pid.rsplit('/', 3)[-3]}/{pid.rsplit('/', 1)[-1]}",
                    pid.lower() in lower, f"ids {ids}")
        for pid in dont_want:
            c.check(f"{label}: excludes {pid.rsplit('/', 3)[-3]}/{pid.rsplit('/', 1)[-1]}",
                    pid.lower() not in lower, f"ids {ids}")
        outside = [p.id for p in items if not scope_ok(p)]
        c.check(f"{label}: every item is inside the scope", not outside, f"outside: {outside}")
        for p in items:
            if (p.id or "").lower() == id1.lower():
                c.eq(f"{label}: {POLICY1} content", rules_of(p), expected1)

    def in_rg(p):
        return f"/resourcegroups/{rg.lower()}/" in (p.id or "").lower()

    def in_loc1(p):
        return (p.location or "").lower() == LOC1 and f"/locations/{LOC1}/" in (p.id or "").lower()

    listing("list()", ops.list, [id1, id2], [], lambda p: True)
    listing(f"list_by_region({LOC1!r})", lambda: ops.list_by_region(LOC1), [id1], [id2], in_loc1)
    listing(f"list_by_resource_group({rg!r})", lambda: ops.list_by_resource_group(rg),
            [id1, id2], [], in_rg)
    listing(f"list_by_resource_group_and_region({rg!r}, {LOC1!r})",
            lambda: ops.list_by_resource_group_and_region(rg, LOC1), [id1], [id2],
            lambda p: in_rg(p) and in_loc1(p))

    section("initiate (accepted requests)")
    just_first = f"jitgate sdk test {run_tag}: first ssh grant"
    end_first = utcnow().replace(microsecond=123000) + dt.timedelta(hours=1)
    t0 = utcnow()
    ok, r = c.call("initiate port 22 from 127.0.0.1 for 1h (model body)",
                   lambda: ops.initiate(rg, LOC1, POLICY1,
                                        initiate_body(vm1, 22, "127.0.0.1", end_first, just_first)))
    if ok:
        c.eq("initiate: answered 202", c.last_status(), 202)
        check_grant(c, "initiate 22", r, vm1, 22, "127.0.0.1", end_first, just_first, t0, utcnow())

    for source in ["10.0.0.0/24", "10.0.0.7"]:
        just = f"jitgate sdk test {run_tag}: rdp from {source}"
        end = utcnow() + dt.timedelta(minutes=30)
        t0 = utcnow()
        ok, r = c.call(f"initiate port 3389 from {source} (allowed prefix 10.0.0.0/24)",
                       lambda: ops.initiate(rg, LOC1, POLICY1, initiate_body(vm1, 3389, source, end, just)))
        if ok:
            check_grant(c, f"initiate 3389 from {source}", r, vm1, 3389, source, end, just, t0, utcnow())

    just_dur = f"jitgate sdk test {run_tag}: duration PT30M"
    body = raw_initiate_body(vm1, {"number": 22, "duration": "PT30M",
                                   "allowedSourceAddressPrefix": "127.0.0.1"}, just_dur)
    t0 = utcnow()
    ok, r = c.call("initiate port 22 with duration PT30M (raw JSON bytes)",
                   lambda: ops.initiate(rg, LOC1, POLICY1, body))
    t1 = utcnow()
    if ok:
        window = (t0 + dt.timedelta(minutes=30) - TIME_TOLERANCE, t1 + dt.timedelta(minutes=30) + TIME_TOLERANCE)
        check_grant(c, "initiate 22 PT30M", r, vm1, 22, "127.0.0.1", window, just_dur, t0, t1)

    just_second = f"jitgate sdk test {run_tag}: second ssh grant"
    end_second = utcnow() + dt.timedelta(hours=2)
    t0 = utcnow()
    ok, r = c.call("initiate port 22 from 127.0.0.1 again",
                   lambda: ops.initiate(rg, LOC1, POLICY1,
                                        initiate_body(vm1, 22, "127.0.0.1", end_second, just_second)))
    if ok:
        check_grant(c, "second initiate 22", r, vm1, 22, "127.0.0.1", end_second, just_second, t0, utcnow())

    section("request history in the policy")
    ok, g1 = c.call(f"get {POLICY1}", lambda: ops.get(rg, LOC1, POLICY1))
    if ok:
        requests = g1.requests or []
        c.check("properties.requests holds the history (>= 4 requests)", len(requests) >= 4,
                f"got {len(requests)} requests")
        bad = [(p.status, p.status_reason) for q in requests for v in q.virtual_machines or []
               for p in v.ports or []
               if p.status not in ("Initiated", "Revoked")
               or p.status_reason not in ("Expired", "UserRequested", "NewerRequestInitiated")]
        c.check("every history entry has a known status and status_reason", not bad, f"got {bad}")
        c.eq(f"{POLICY1} rules unchanged by the requests", rules_of(g1), expected1)
        first = find_request(g1, just_first)
        if c.check("the first port-22 grant is in the history", first is not None,
                   f"justifications: {[q.justification for q in requests]}"):
            _, port = first_port(first)
            c.eq("first grant: (status, status_reason)",
                 (port.status, port.status_reason) if port else None, ("Revoked", "NewerRequestInitiated"))
            c.check("first grant: end time kept", port is not None and same_instant(port.end_time_utc, end_first),
                    f"got {port.end_time_utc if port else None!r}, expected {iso(end_first)}")
        second = find_request(g1, just_second)
        if c.check("the second port-22 grant is in the history", second is not None,
                   f"justifications: {[q.justification for q in requests]}"):
            _, port = first_port(second)
            c.eq("second grant: (status, status_reason)",
                 (port.status, port.status_reason) if port else None, ("Initiated", "UserRequested"))

    section("initiate requests outside the policy are refused (400)")

    def refused(label, number, source, end, vm=vm1):
        c.expect_error(label, lambda: ops.initiate(rg, LOC1, POLICY1, initiate_body(
            vm, number, source, end, f"jitgate sdk test {run_tag}: {label}")), 400, HttpResponseError)

    now = utcnow()
    refused("initiate on port 8080 (not in the policy)", 8080, "127.0.0.1", now + dt.timedelta(minutes=30))
    refused("initiate port 22 until now+5h (max PT3H)", 22, "127.0.0.1", now + dt.timedelta(hours=5))
    refused("initiate port 3389 from 172.16.0.1 (outside the allowed prefixes)", 3389, "172.16.0.1",
            now + dt.timedelta(minutes=30))
    refused("initiate port 22 with an end time in the past", 22, "127.0.0.1", now - dt.timedelta(hours=1))
    refused(f"initiate for VM2 against {POLICY1} (VM not in the policy)", 22, "127.0.0.1",
            now + dt.timedelta(minutes=30), vm=vm2)
    both = raw_initiate_body(vm1, {"number": 22, "allowedSourceAddressPrefix": "127.0.0.1",
                                   "endTimeUtc": iso(now + dt.timedelta(minutes=30)), "duration": "PT30M"},
                             f"jitgate sdk test {run_tag}: both end time and duration")
    c.expect_error("initiate with both endTimeUtc and duration (raw JSON bytes)",
                   lambda: ops.initiate(rg, LOC1, POLICY1, both), 400, HttpResponseError)
    ok, g1 = c.call(f"get {POLICY1} after the refused requests", lambda: ops.get(rg, LOC1, POLICY1))
    if ok:
        second = find_request(g1, just_second)
        _, port = first_port(second) if second else (None, None)
        c.eq("refused requests did not revoke the live port-22 grant",
             (port.status, port.status_reason) if port else None, ("Initiated", "UserRequested"))

    section("delete")
    if c.call(f"delete {POLICY1}", lambda: ops.delete(rg, LOC1, POLICY1))[0]:
        c.eq(f"delete {POLICY1}: answered 200", c.last_status(), 200)
    c.expect_error(f"get {POLICY1} after delete", lambda: ops.get(rg, LOC1, POLICY1), 404, ResourceNotFoundError)
    if c.call(f"delete {POLICY1} again (idempotent)", lambda: ops.delete(rg, LOC1, POLICY1))[0]:
        c.eq(f"delete {POLICY1} again: answered 204", c.last_status(), 204)
    if c.call(f"delete {POLICY2}", lambda: ops.delete(rg, LOC2, POLICY2))[0]:
        c.eq(f"delete {POLICY2}: answered 200", c.last_status(), 200)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base_url", metavar="BASE_URL", help="jitgate's HTTPS base URL, e.g. https://127.0.0.1:8443")
    ap.add_argument("--ca-bundle", required=True, metavar="PEM", help="CA / self-signed certificate to trust")
    ap.add_argument("--subscription", required=True, metavar="GUID")
    ap.add_argument("--token", required=True, help="bearer token (jitgate admin token)")
    ap.add_argument("--resource-group", required=True, metavar="RG")
    ap.add_argument("--vm-id", required=True, metavar="ARM_ID", help=f"VM1 (registered, {LOC1})")
    ap.add_argument("--vm2-id", required=True, metavar="ARM_ID", help=f"VM2 (registered, {LOC2})")
    args = ap.parse_args(argv)
    if not args.base_url.startswith("https://"):
        ap.error("BASE_URL must be https:// (the SDK refuses bearer tokens over plain HTTP)")
    if not os.path.isfile(args.ca_bundle):
        ap.error(f"--ca-bundle {args.ca_bundle}: no such file")
    for opt, vm in (("--vm-id", args.vm_id), ("--vm2-id", args.vm2_id)):
        if "/providers/microsoft.compute/virtualmachines/" not in vm.lower():
            ap.error(f"{opt} must be a Microsoft.Compute/virtualMachines ARM id")
    if args.vm_id.lower() == args.vm2_id.lower():
        ap.error("--vm-id and --vm2-id must differ")
    return args


def main(argv):
    args = parse_args(argv)  # exits 2 on usage errors

    global AccessToken, SecurityCenter, M, HttpResponseError, ResourceNotFoundError
    global ClientAuthenticationError, ServiceRequestError, ServiceResponseError
    try:
        from azure.core.credentials import AccessToken
        from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError,
                                           ResourceNotFoundError, ServiceRequestError,
                                           ServiceResponseError)
        from azure.mgmt.security import SecurityCenter
        from azure.mgmt.security.v2020_01_01 import models as M
    except ImportError as e:
        print(f"error: {e}; create the venv with scripts/azure-sdk-venv.sh", file=sys.stderr)
        return 2

    c = Checks()
    try:
        run(args, c)
    except (ConnectionProblem, ServiceRequestError, ServiceResponseError) as e:
        print(f"\nerror: connection problem: {e}", file=sys.stderr)
        print(f"({c.passed} checks passed, {len(c.failed)} failed before that)", file=sys.stderr)
        return 2

    print(f"\n{c.passed} checks passed, {len(c.failed)} failed")
    for label in c.failed:
        print(f"  failed: {label}")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
