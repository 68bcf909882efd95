"""Storage: artifacts, the conversation chain and the model delta log.

Each store sits behind an interface a second backend can implement; this floor
imports only the ground floor (`agentrun`).
"""
