//! EC2's answers (the element tree of [`crate::xml`]) into the plain data of [`crate::model`].
//! Unknown elements are ignored; a missing id or an unreadable number or address is a
//! [`Ec2Error::Decode`] naming what was wrong.

use std::net::IpAddr;

use crate::model::{GroupRef, Instance, IpPermission, IpRange, SecurityGroup, Tag};
use crate::xml::{self, Element};
use crate::Ec2Error;

fn decode(what: impl Into<String>) -> Ec2Error {
    Ec2Error::Decode(what.into())
}

fn required(e: &Element, name: &str, of: &str) -> Result<String, Ec2Error> {
    e.text_of(name).map(str::to_owned).ok_or_else(|| decode(format!("{of} without <{name}>")))
}

fn optional(e: &Element, name: &str) -> Option<String> {
    e.text_of(name).map(str::to_owned)
}

/// The `nextToken` of a page; `None` on the last page.
pub(crate) fn next_token(root: &Element) -> Option<String> {
    optional(root, "nextToken")
}

fn tags(e: &Element) -> Vec<Tag> {
    e.items("tagSet")
        .filter_map(|t| {
            let key = t.text_of("key")?;
            Some(Tag::new(key, t.child("value").map(|v| v.text.as_str()).unwrap_or("")))
        })
        .collect()
}

fn address(e: &Element, name: &str, of: &str) -> Result<Option<IpAddr>, Ec2Error> {
    e.text_of(name)
        .map(|a| a.parse().map_err(|_| decode(format!("{of}: <{name}> {a:?} is not an IP address"))))
        .transpose()
}

/// The instances of one `DescribeInstances` page, from every reservation.
pub(crate) fn instances(root: &Element) -> Result<Vec<Instance>, Ec2Error> {
    let mut out = Vec::new();
    for reservation in root.items("reservationSet") {
        for i in reservation.items("instancesSet") {
            let instance_id = required(i, "instanceId", "an instance")?;
            let of = format!("instance {instance_id}");
            let state = i.child("instanceState").and_then(|s| s.text_of("name")).unwrap_or("").to_owned();
            // The instance's groups; when an answer leaves them out there (moto does), those of
            // its primary network interface, which are the same.
            let primary = i.items("networkInterfaceSet").find(|n| {
                n.child("attachment").and_then(|a| a.text_of("deviceIndex")).is_some_and(|d| d.trim() == "0")
            });
            let groups = match (i.items("groupSet").next(), primary) {
                (None, Some(eni)) => eni.items("groupSet").collect::<Vec<_>>(),
                _ => i.items("groupSet").collect(),
            };
            let security_groups = groups
                .into_iter()
                .map(|g| {
                    Ok(GroupRef {
                        group_id: required(g, "groupId", &format!("a group of {of}"))?,
                        group_name: optional(g, "groupName").unwrap_or_default(),
                    })
                })
                .collect::<Result<_, Ec2Error>>()?;
            out.push(Instance {
                state,
                platform: optional(i, "platform"),
                vpc_id: optional(i, "vpcId"),
                subnet_id: optional(i, "subnetId"),
                private_ip: address(i, "privateIpAddress", &of)?,
                public_ip: address(i, "ipAddress", &of)?,
                security_groups,
                tags: tags(i),
                instance_id,
            });
        }
    }
    Ok(out)
}

fn port(e: &Element, name: &str, of: &str) -> Result<Option<i32>, Ec2Error> {
    e.text_of(name)
        .map(|p| p.trim().parse().map_err(|_| decode(format!("{of}: <{name}> {p:?} is not a port number"))))
        .transpose()
}

fn ranges(p: &Element, list: &str, cidr: &str) -> Vec<IpRange> {
    p.items(list)
        .filter_map(|r| Some(IpRange { cidr: r.text_of(cidr)?.to_owned(), description: optional(r, "description") }))
        .collect()
}

fn permission(p: &Element, of: &str) -> Result<IpPermission, Ec2Error> {
    Ok(IpPermission {
        protocol: required(p, "ipProtocol", &format!("a rule of {of}"))?,
        from_port: port(p, "fromPort", of)?,
        to_port: port(p, "toPort", of)?,
        ipv4_ranges: ranges(p, "ipRanges", "cidrIp"),
        ipv6_ranges: ranges(p, "ipv6Ranges", "cidrIpv6"),
        source_groups: p.items("groups").filter_map(|g| optional(g, "groupId")).collect(),
        prefix_lists: p.items("prefixListIds").filter_map(|l| optional(l, "prefixListId")).collect(),
    })
}

/// The groups of one `DescribeSecurityGroups` page, with their inbound rules.
pub(crate) fn security_groups(root: &Element) -> Result<Vec<SecurityGroup>, Ec2Error> {
    root.items("securityGroupInfo")
        .map(|g| {
            let group_id = required(g, "groupId", "a security group")?;
            let of = format!("security group {group_id}");
            Ok(SecurityGroup {
                group_name: optional(g, "groupName").unwrap_or_default(),
                description: g.child("groupDescription").map(|d| d.text.clone()).unwrap_or_default(),
                vpc_id: optional(g, "vpcId"),
                ingress: g.items("ipPermissions").map(|p| permission(p, &of)).collect::<Result<_, _>>()?,
                tags: tags(g),
                group_id,
            })
        })
        .collect()
}

/// The new group's id in a `CreateSecurityGroupResponse`.
pub(crate) fn created_group(root: &Element) -> Result<String, Ec2Error> {
    required(root, "groupId", "the CreateSecurityGroup answer")
}

/// An answer that was not a success: EC2's `<Response><Errors><Error>` (or the shorter
/// `<ErrorResponse><Error>`), else the status with the start of the body.
pub(crate) fn error(status: u16, body: &[u8]) -> Ec2Error {
    let parsed = xml::parse(body).ok();
    let found = parsed.as_ref().and_then(|root| {
        let error = root.child("Errors").and_then(|e| e.child("Error")).or_else(|| root.child("Error"))?;
        let request_id = root.text_of("RequestID").or_else(|| root.text_of("RequestId")).map(str::to_owned);
        Some((error.text_of("Code")?.to_owned(), optional(error, "Message").unwrap_or_default(), request_id))
    });
    match found {
        Some((code, message, request_id)) => Ec2Error::Api { status, code, message, request_id },
        None => {
            let start: String =
                String::from_utf8_lossy(&body[..body.len().min(200)]).chars().filter(|c| !c.is_control()).collect();
            Ec2Error::Api {
                status,
                code: format!("Http{status}"),
                message: if start.is_empty() { "no error body".into() } else { start },
                request_id: None,
            }
        }
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
