//! Node registration from EC2: polls DescribeInstances (moto or any EC2 Query API endpoint) and keeps one
//! Node per instance tagged `phoenix:env=CLUSTER`.

use crate::cluster::{DeleteOpts, NodeSim};
use crate::server::Shared;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use quick_xml::events::Event as XmlEvent;
use serde_json::{json, Map};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ENV_TAG: &str = "phoenix:env";
pub const ROLE_TAG: &str = "phoenix:role";

/// Where to poll.
#[derive(Debug, Clone)]
pub struct Ec2Config {
    /// e.g. `http://127.0.0.1:5000` (plain HTTP).
    pub endpoint: String,
    pub region: String,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Instance {
    pub id: String,
    pub state: String,
    pub private_dns: String,
    pub zone: String,
    pub tags: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("invalid EC2 endpoint {0:?}")]
    Endpoint(String),
    #[error("error calling DescribeInstances")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("DescribeInstances timed out")]
    Timeout,
    #[error("error reading the DescribeInstances response")]
    Body(#[source] hyper::Error),
    #[error("DescribeInstances returned HTTP {0}")]
    Status(u16),
    #[error("error parsing the DescribeInstances response")]
    Xml(#[source] quick_xml::Error),
}

/// Parse a DescribeInstances XML response into instances.
pub fn parse_describe_instances(xml: &[u8]) -> Result<Vec<Instance>, Ec2Error> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut cur: Option<(usize, Instance)> = None;
    let mut tag_key = String::new();
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).map_err(Ec2Error::Xml)? {
            XmlEvent::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if name == "item"
                    && stack.last().map(String::as_str) == Some("instancesSet")
                    && cur.is_none()
                {
                    cur = Some((stack.len() + 1, Instance::default()));
                }
                stack.push(name);
            }
            XmlEvent::End(_) => {
                if let Some((d, _)) = &cur {
                    if stack.len() == *d {
                        if let Some((_, inst)) = cur.take() {
                            out.push(inst);
                        }
                    }
                }
                stack.pop();
            }
            XmlEvent::Text(t) => {
                let text = t.decode().map(|c| c.into_owned()).unwrap_or_default();
                let text = quick_xml::escape::unescape(&text)
                    .map(|c| c.into_owned())
                    .unwrap_or(text);
                if let Some((d, inst)) = cur.as_mut() {
                    let rel: Vec<&str> = stack[*d..].iter().map(String::as_str).collect();
                    match rel.as_slice() {
                        ["instanceId"] => inst.id = text,
                        ["instanceState", "name"] => inst.state = text,
                        ["privateDnsName"] => inst.private_dns = text,
                        ["placement", "availabilityZone"] => inst.zone = text,
                        ["tagSet", "item", "key"] => tag_key = text,
                        ["tagSet", "item", "value"] => {
                            inst.tags.insert(std::mem::take(&mut tag_key), text);
                        }
                        _ => {}
                    }
                }
            }
            XmlEvent::Empty(_) => {
                // <value/> for an empty tag value.
                if let Some((d, inst)) = cur.as_mut() {
                    let rel: Vec<&str> = stack[*d..].iter().map(String::as_str).collect();
                    if rel.as_slice() == ["tagSet", "item"] && !tag_key.is_empty() {
                        inst.tags
                            .insert(std::mem::take(&mut tag_key), String::new());
                    }
                }
            }
            XmlEvent::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(out)
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn describe(client: &Client, cfg: &Ec2Config) -> Result<Vec<Instance>, Ec2Error> {
    let body = format!(
        "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag-key&Filter.1.Value.1={}",
        ENV_TAG.replace(':', "%3A")
    );
    let uri: hyper::Uri = cfg
        .endpoint
        .trim_end_matches('/')
        .to_string()
        .add_slash()
        .parse()
        .map_err(|_| Ec2Error::Endpoint(cfg.endpoint.clone()))?;
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=test/20260101/{}/ec2/aws4_request, SignedHeaders=host, Signature=0",
        cfg.region
    );
    let req = hyper::Request::post(uri)
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .header("authorization", auth)
        .header("x-amz-date", "20260101T000000Z")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| Ec2Error::Endpoint(cfg.endpoint.clone()))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| Ec2Error::Timeout)?
        .map_err(Ec2Error::Request)?;
    let status = resp.status().as_u16();
    let bytes = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .map_err(|_| Ec2Error::Timeout)?
        .map_err(Ec2Error::Body)?
        .to_bytes();
    if status != 200 {
        return Err(Ec2Error::Status(status));
    }
    parse_describe_instances(&bytes)
}

trait AddSlash {
    fn add_slash(self) -> String;
}
impl AddSlash for String {
    fn add_slash(self) -> String {
        format!("{self}/")
    }
}

pub fn node_name(inst: &Instance) -> String {
    let first = inst.private_dns.split('.').next().unwrap_or("");
    if first.is_empty() {
        inst.id.clone()
    } else {
        first.to_string()
    }
}

/// Poll forever, reconciling nodes after each successful DescribeInstances.
pub async fn run(shared: Arc<Shared>, cfg: Ec2Config, node_delay: Duration, log: bool) {
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut interval = tokio::time::interval(cfg.poll_interval);
    loop {
        interval.tick().await;
        // An unreachable endpoint leaves nodes as they are; the next poll retries.
        match describe(&client, &cfg).await {
            Ok(instances) => sync(&shared, &instances, node_delay),
            Err(e) if log => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                eprintln!("ec2 poll of {} failed: {msg}", cfg.endpoint);
            }
            Err(_) => {}
        }
    }
}

fn sync(shared: &Arc<Shared>, instances: &[Instance], node_delay: Duration) {
    let mut by_cluster: HashMap<String, Vec<&Instance>> = HashMap::new();
    for i in instances {
        if let Some(env) = i.tags.get(ENV_TAG) {
            if crate::util::validate_dns1123_subdomain(env).is_none() {
                by_cluster.entry(env.clone()).or_default().push(i);
            }
        }
    }
    // Clusters with live instances are created on registration.
    for (name, insts) in &by_cluster {
        if insts.iter().any(|i| i.state == "running") {
            shared.cluster(name);
        }
    }
    let names: Vec<String> = shared
        .clusters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect();
    let nodes_key = (String::new(), "nodes".to_string());
    for cname in names {
        let Some(c) = shared.existing(&cname) else {
            continue;
        };
        let insts = by_cluster.get(&cname).cloned().unwrap_or_default();
        let mut st = c.lock();
        let had_ec2_nodes = st.node_sim.values().any(|s| s.instance_id.is_some());
        let node_t = st.type_by_kind("", "nodes");
        let mut seen: HashSet<String> = HashSet::new();
        for i in insts {
            let name = node_name(i);
            match i.state.as_str() {
                "running" => {
                    seen.insert(name.clone());
                    let exists = st.get(&nodes_key, "", &name).is_some();
                    match st.node_sim.get_mut(&name) {
                        Some(sim) if exists => {
                            if !sim.running {
                                sim.running = true;
                                sim.ready_at = Instant::now() + node_delay;
                            }
                        }
                        _ => {
                            let mut labels = Map::new();
                            if i.tags.get(ROLE_TAG).map(String::as_str) == Some("server") {
                                labels.insert(
                                    "node-role.kubernetes.io/control-plane".into(),
                                    json!("true"),
                                );
                                labels
                                    .insert("node-role.kubernetes.io/master".into(), json!("true"));
                            }
                            if !i.zone.is_empty() {
                                labels.insert("topology.kubernetes.io/zone".into(), json!(i.zone));
                                let region =
                                    i.zone.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                                labels
                                    .insert("topology.kubernetes.io/region".into(), json!(region));
                            }
                            labels.insert("node.kubernetes.io/instance-id".into(), json!(i.id));
                            let version = c.version();
                            crate::controller::register_node(
                                &mut st,
                                &version,
                                &name,
                                labels,
                                Some(format!("aws:///{}/{}", i.zone, i.id)),
                                NodeSim {
                                    ready_at: Instant::now() + node_delay,
                                    running: true,
                                    instance_id: Some(i.id.clone()),
                                },
                            );
                        }
                    }
                }
                "pending" | "stopping" | "stopped" => {
                    seen.insert(name.clone());
                    if let Some(sim) = st.node_sim.get_mut(&name) {
                        sim.running = false;
                    }
                }
                _ => {}
            }
        }
        // Nodes whose instance terminated or vanished are deleted.
        let gone: Vec<String> = st
            .node_sim
            .iter()
            .filter(|(n, s)| s.instance_id.is_some() && !seen.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            st.node_sim.remove(&n);
            let _ = st.delete(&node_t, "", &n, &DeleteOpts::default(), "");
        }
        let names: Vec<String> = st.node_sim.keys().cloned().collect();
        for n in names {
            crate::controller::refresh_node(&mut st, &n);
        }
        // The control plane lives on the instances: when the last one is terminated, the cluster is gone.
        if had_ec2_nodes && seen.is_empty() {
            drop(st);
            shared.remove_cluster(&cname);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_instances_and_ignores_nested_items() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <reservationSet><item><reservationId>r-1</reservationId>
    <instancesSet><item>
      <instanceId>i-abc</instanceId>
      <instanceState><code>16</code><name>running</name></instanceState>
      <privateDnsName>ip-10-40-1-12.ec2.internal</privateDnsName>
      <placement><availabilityZone>us-east-1a</availabilityZone></placement>
      <networkInterfaceSet><item><privateDnsName>other.internal</privateDnsName></item></networkInterfaceSet>
      <tagSet><item><key>phoenix:env</key><value>demo</value></item><item><key>phoenix:role</key><value>server</value></item></tagSet>
    </item></instancesSet>
  </item></reservationSet>
</DescribeInstancesResponse>"#;
        let insts = parse_describe_instances(xml).unwrap();
        assert_eq!(insts.len(), 1);
        let i = &insts[0];
        assert_eq!(i.id, "i-abc");
        assert_eq!(i.state, "running");
        assert_eq!(i.private_dns, "ip-10-40-1-12.ec2.internal");
        assert_eq!(i.zone, "us-east-1a");
        assert_eq!(i.tags.get("phoenix:env").unwrap(), "demo");
        assert_eq!(node_name(i), "ip-10-40-1-12");
    }
}
