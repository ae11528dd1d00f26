//! ECR registry hosts and IAM role ARNs.

use std::fmt;

use crate::error::{Error, Result};

/// An ECR registry, parsed from its host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EcrRegistry {
    /// The host as given.
    pub host: String,
    /// 12-digit account id (the registry id).
    pub account_id: String,
    /// Region, e.g. `eu-west-1`.
    pub region: String,
    /// AWS partition: `aws`, `aws-cn` or `aws-us-gov`.
    pub partition: String,
    /// A FIPS endpoint.
    pub fips: bool,
    /// The dual-stack `on.aws` form.
    pub dual_stack: bool,
}

impl EcrRegistry {
    /// Parses `ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]` and
    /// `ACCOUNT.dkr-ecr[-fips].REGION.on.aws`. A port is not allowed.
    pub fn parse(host: &str) -> Result<Self> {
        let bad = |reason: &str| Error::NotAnEcrHost {
            host: host.to_string(),
            reason: reason.to_string(),
        };
        let labels: Vec<&str> = host.split('.').collect();
        if labels.len() < 5 {
            return Err(bad("too few labels"));
        }
        let account = labels[0];
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the first label must be a 12-digit account id"));
        }
        let (service, region, suffix) = (labels[1..3].join("."), labels[3], labels[4..].join("."));
        let (fips, dual_stack) = match (service.as_str(), suffix.as_str()) {
            ("dkr.ecr", "amazonaws.com" | "amazonaws.com.cn") => (false, false),
            ("dkr.ecr-fips", "amazonaws.com") => (true, false),
            _ => match (labels[1], labels.get(2).copied(), &labels[3..]) {
                ("dkr-ecr", Some(region), ["on", "aws"]) => {
                    return Ok(Self::new(host, account, region, false, true))
                }
                ("dkr-ecr-fips", Some(region), ["on", "aws"]) => {
                    return Ok(Self::new(host, account, region, true, true))
                }
                _ => return Err(bad("unknown service or domain")),
            },
        };
        if suffix == "amazonaws.com.cn" && !region.starts_with("cn-") {
            return Err(bad("a .amazonaws.com.cn host needs a cn- region"));
        }
        Ok(Self::new(host, account, region, fips, dual_stack))
    }

    fn new(host: &str, account: &str, region: &str, fips: bool, dual_stack: bool) -> Self {
        let partition = if region.starts_with("cn-") {
            "aws-cn"
        } else if region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        };
        EcrRegistry {
            host: host.to_string(),
            account_id: account.to_string(),
            region: region.to_string(),
            partition: partition.to_string(),
            fips,
            dual_stack,
        }
    }

    /// Whether a host looks like ECR (and should be parsed as such).
    pub fn is_ecr_host(host: &str) -> bool {
        host.contains(".dkr.ecr") || host.contains(".dkr-ecr")
    }

    /// The ARN of a repository in this registry.
    pub fn repository_arn(&self, repository: &str) -> String {
        format!(
            "arn:{}:ecr:{}:{}:repository/{repository}",
            self.partition, self.region, self.account_id
        )
    }
}

impl fmt::Display for EcrRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)
    }
}

/// An IAM role ARN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleArn {
    /// The ARN text.
    pub arn: String,
    /// Account id of the role.
    pub account_id: String,
}

impl RoleArn {
    /// Parses `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::BadRoleArn {
            arn: text.to_string(),
        };
        let parts: Vec<&str> = text.splitn(6, ':').collect();
        if parts.len() != 6
            || parts[0] != "arn"
            || !matches!(parts[1], "aws" | "aws-cn" | "aws-us-gov")
            || parts[2] != "iam"
            || !parts[3].is_empty()
        {
            return Err(bad());
        }
        let account = parts[4];
        let name = parts[5].strip_prefix("role/").ok_or_else(bad)?;
        let name_ok = !name.is_empty()
            && name.len() <= 512
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c));
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) || !name_ok {
            return Err(bad());
        }
        Ok(RoleArn {
            arn: text.to_string(),
            account_id: account.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_ecr_host_form() {
        let cases = [
            (
                "111111111111.dkr.ecr.us-east-1.amazonaws.com",
                "us-east-1",
                "aws",
                false,
                false,
            ),
            (
                "111111111111.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
                "us-gov-west-1",
                "aws-us-gov",
                true,
                false,
            ),
            (
                "111111111111.dkr.ecr.cn-north-1.amazonaws.com.cn",
                "cn-north-1",
                "aws-cn",
                false,
                false,
            ),
            (
                "111111111111.dkr-ecr.eu-west-1.on.aws",
                "eu-west-1",
                "aws",
                false,
                true,
            ),
            (
                "111111111111.dkr-ecr-fips.us-east-2.on.aws",
                "us-east-2",
                "aws",
                true,
                true,
            ),
        ];
        for (host, region, partition, fips, dual) in cases {
            let r = EcrRegistry::parse(host).unwrap();
            assert_eq!(
                (
                    r.account_id.as_str(),
                    r.region.as_str(),
                    r.partition.as_str(),
                    r.fips,
                    r.dual_stack
                ),
                ("111111111111", region, partition, fips, dual),
                "{host}"
            );
        }
        assert_eq!(
            EcrRegistry::parse("111111111111.dkr.ecr.us-east-1.amazonaws.com")
                .unwrap()
                .repository_arn("ml/x"),
            "arn:aws:ecr:us-east-1:111111111111:repository/ml/x"
        );
    }

    #[test]
    fn rejects_lookalikes() {
        for bad in [
            "ghcr.io",
            "11111111111.dkr.ecr.us-east-1.amazonaws.com",
            "111111111111.dkr.ecr.us-east-1.example.com",
            "111111111111.dkr.ecr.us-east-1.amazonaws.com.cn",
            "111111111111.dkr.ecr.us-east-1.amazonaws.com:443",
            "abcdefghijkl.dkr.ecr.us-east-1.amazonaws.com",
        ] {
            assert!(EcrRegistry::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn role_arns() {
        assert_eq!(
            RoleArn::parse("arn:aws:iam::222222222222:role/path/ecr-replicator-target")
                .unwrap()
                .account_id,
            "222222222222"
        );
        for bad in [
            "arn:aws:iam::2222:role/x",
            "arn:aws:iam::222222222222:user/x",
            "arn:aws:s3:::b",
            "role/x",
            "arn:aws:iam::222222222222:role/",
        ] {
            assert!(RoleArn::parse(bad).is_err(), "{bad}");
        }
    }
}
