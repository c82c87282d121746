"""The CDK app for the `cdk` CLI: `cdk synth|diff|deploy` from this directory (cdk.json).

The stack lives in the package (`trace_platform.deploy.aws`, extra `[deploy]`) so that
`trace deploy aws synth` builds the same template from an installed wheel.
"""

from trace_platform.deploy.aws import build

build().synth()
