terraform {
  # No provider: this module only computes values, so it can be used (and tested) anywhere.
  required_version = ">= 1.3.0"
}
