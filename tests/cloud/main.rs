//! The cloud layer (phoenix's EC2 provider through the engine) against moto, with fault proxies in front of it.

mod provider;
