terraform {
  required_version = ">= 1.3.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
    datadog = {
      source  = "DataDog/datadog"
      version = ">= 3.30"
    }
  }
}

provider "aws" {
  region = "eu-west-1"
}

# DD_API_KEY / DD_APP_KEY from the environment
provider "datadog" {}
