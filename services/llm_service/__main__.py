from vagent.services.llm_service.service import main

main()
