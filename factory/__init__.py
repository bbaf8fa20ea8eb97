"""Training side of style-factory: many style transfer networks on Ray Train, one frozen VGG-19 loss."""
