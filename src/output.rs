//! Build outputs beside the image: manifest.json, .sha256, SPDX SBOM. (Being implemented.)
