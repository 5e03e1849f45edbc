"""Network, cluster memories, ADC loss and the LightningModule (issue 4)."""
