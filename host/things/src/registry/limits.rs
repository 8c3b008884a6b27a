//! Registry limits and configuration.

use std::time::Duration;

/// The registry's limits; [`RegistryLimits::default`] is AWS IoT's.
///
/// Sources: attribute counts from the developer guide's thing-types page (3 attributes without
/// a type, 50 with one); group depth 7, 100 direct children and 50 group attributes from the
/// (older) AWS IoT limits page; 10 groups per thing and "one group per hierarchy" from the
/// static-thing-groups page; 3 searchable attributes per type from the thing-types page; the
/// five-minute wait between deprecating and deleting a type from the thing-types page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryLimits {
    /// Attributes a thing without a type may have (AWS: 3).
    pub max_attributes_without_type: usize,
    /// Attributes a thing with a type may have (AWS: 50).
    pub max_attributes_with_type: usize,
    /// Attributes a thing group may have (AWS: 50).
    pub max_group_attributes: usize,
    /// Searchable attributes a thing type may declare (AWS: 3).
    pub max_searchable_attributes: usize,
    /// Levels of a group hierarchy, the root group being level 1 (AWS: 7).
    pub max_group_depth: usize,
    /// Direct child groups of one group (AWS: 100).
    pub max_child_groups: usize,
    /// Groups one thing may belong to (AWS: 10).
    pub max_groups_per_thing: usize,
    /// AWS refuses to add a thing to two groups of the same hierarchy (two groups with the
    /// same root group). `true` (AWS) enforces it.
    pub one_group_per_hierarchy: bool,
    /// How long a type must have been deprecated before it can be deleted (AWS: 5 minutes).
    pub type_delete_delay: Duration,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            max_attributes_without_type: 3,
            max_attributes_with_type: 50,
            max_group_attributes: 50,
            max_searchable_attributes: 3,
            max_group_depth: 7,
            max_child_groups: 100,
            max_groups_per_thing: 10,
            one_group_per_hierarchy: true,
            type_delete_delay: Duration::from_secs(5 * 60),
        }
    }
}

/// What the registry needs besides the store: where ARNs point, and the limits.
///
/// ARNs are `arn:{partition}:iot:{region}:{account_id}:{thing|thingtype|thinggroup}/{name}`.
/// They are computed when a resource is created and stored with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// ARN partition (`aws`).
    pub partition: String,
    /// ARN region (`us-east-1`).
    pub region: String,
    /// ARN account id, twelve digits by AWS convention (`000000000000`).
    pub account_id: String,
    /// The limits.
    pub limits: RegistryLimits,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            partition: "aws".into(),
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            limits: RegistryLimits::default(),
        }
    }
}

impl RegistryConfig {
    /// The ARN of a resource: `kind` is `thing`, `thingtype` or `thinggroup`.
    pub fn arn(&self, kind: &str, name: &str) -> String {
        format!(
            "arn:{}:iot:{}:{}:{kind}/{name}",
            self.partition, self.region, self.account_id
        )
    }
}

/// The resource name an ARN of `kind` (`thing`, `thinggroup`) names, if it is one; used to
/// resolve `thingArn`/`thingGroupArn` request fields. The ARN's partition, region and account
/// are checked against the stored ARN afterwards, not here.
pub fn name_from_arn<'a>(arn: &'a str, kind: &str) -> Option<&'a str> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_), Some("iot"), Some(_), Some(_), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    resource.strip_prefix(kind)?.strip_prefix('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_round_trip() {
        let c = RegistryConfig::default();
        let arn = c.arn("thing", "t1");
        assert_eq!(arn, "arn:aws:iot:us-east-1:000000000000:thing/t1");
        assert_eq!(name_from_arn(&arn, "thing"), Some("t1"));
        assert_eq!(name_from_arn(&arn, "thinggroup"), None);
        assert_eq!(
            name_from_arn(&c.arn("thinggroup", "g:1"), "thinggroup"),
            Some("g:1")
        );
        assert_eq!(name_from_arn("arn:aws:s3:::b/k", "thing"), None);
        assert_eq!(name_from_arn("nonsense", "thing"), None);
    }

    #[test]
    fn defaults_are_aws_limits() {
        let l = RegistryLimits::default();
        assert_eq!(
            (
                l.max_attributes_without_type,
                l.max_attributes_with_type,
                l.max_group_depth
            ),
            (3, 50, 7)
        );
        assert_eq!(l.max_groups_per_thing, 10);
        assert_eq!(l.type_delete_delay, Duration::from_secs(300));
    }
}
