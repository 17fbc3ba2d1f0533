//! `[image]`: the name and version that name every output.

use super::Validator;
use crate::recipe::schema::ImageSection;

impl Validator<'_> {
    pub(super) fn image(&mut self, i: &ImageSection) -> (String, String) {
        self.name(&i.name, "image");
        let version = i.version.get_ref().clone();
        if version.is_empty()
            || version.len() > 64
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~_".contains(c))
        {
            self.problem(
                i.version.span(),
                format!(
                    "image version {version:?} must be {}",
                    crate::recipe::settings::IMAGE_VERSION.help.replace('`', "")
                ),
            );
        }
        (i.name.get_ref().clone(), version)
    }
}
