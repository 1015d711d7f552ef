//! The locale of a phone number's country.

/// The locale usually spoken in a region (an ISO 3166-1 alpha-2 code, as
/// libphonenumber and Twilio's `CallerCountry` give it), as BCP 47
/// language-REGION: the phone-country step of locale resolution (normalize
/// for every participant, ingress for a call's prompts when its URL names no
/// locale); `None` when the region is not listed.
#[must_use]
pub fn locale_of_region(region: &str) -> Option<&'static str> {
    Some(match region {
        "US" => "en-US",
        "GB" => "en-GB",
        "CA" => "en-CA",
        "AU" => "en-AU",
        "NZ" => "en-NZ",
        "IE" => "en-IE",
        "IN" => "en-IN",
        "ZA" => "en-ZA",
        "NG" => "en-NG",
        "SG" => "en-SG",
        "PH" => "en-PH",
        "MX" => "es-MX",
        "ES" => "es-ES",
        "AR" => "es-AR",
        "CO" => "es-CO",
        "CL" => "es-CL",
        "PE" => "es-PE",
        "VE" => "es-VE",
        "BR" => "pt-BR",
        "PT" => "pt-PT",
        "FR" => "fr-FR",
        "BE" => "fr-BE",
        "DE" => "de-DE",
        "AT" => "de-AT",
        "CH" => "de-CH",
        "IT" => "it-IT",
        "NL" => "nl-NL",
        "SE" => "sv-SE",
        "NO" => "nb-NO",
        "DK" => "da-DK",
        "FI" => "fi-FI",
        "PL" => "pl-PL",
        "CZ" => "cs-CZ",
        "GR" => "el-GR",
        "TR" => "tr-TR",
        "RU" => "ru-RU",
        "UA" => "uk-UA",
        "IL" => "he-IL",
        "SA" => "ar-SA",
        "AE" => "ar-AE",
        "EG" => "ar-EG",
        "JP" => "ja-JP",
        "KR" => "ko-KR",
        "CN" => "zh-CN",
        "TW" => "zh-TW",
        "HK" => "zh-HK",
        "ID" => "id-ID",
        "VN" => "vi-VN",
        "TH" => "th-TH",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_map_to_locales() {
        assert_eq!(locale_of_region("MX"), Some("es-MX"));
        assert_eq!(locale_of_region("US"), Some("en-US"));
        assert_eq!(locale_of_region("ZZ"), None);
    }
}
