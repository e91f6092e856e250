terraform {
  # No provider: computes the scaling policy's metric math, the sidecar's settings and the IAM
  # statements; the service module creates the resources from them.
  required_version = ">= 1.3.0"
}
